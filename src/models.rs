//! `blaze models pull|list`, and the pull of missing models when the
//! server starts.

use std::collections::BTreeMap;
use std::time::Instant;

use blaze_actors::router::{ModelCache, ModelFiles, ModelSpec, PullError, PullEvent, PullOutcome, Puller};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use crate::settings::ModelsSettings;

/// How a pull shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar on stderr (hidden when stderr is not a terminal).
    Bar,
    /// Log lines, for the server.
    Log,
}

/// Why models cannot be pulled.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("no model `{id}` in the catalog; configured: {configured}")]
    NotInCatalog { id: String, configured: String },
    #[error("{id}: {source}")]
    Pull { id: String, source: PullError },
    /// The puller itself cannot start (its HTTP client).
    #[error(transparent)]
    Puller(PullError),
    #[error("cannot start the pull's runtime: {0}")]
    Runtime(std::io::Error),
}

/// The models to act on: the named ones (each must exist), or all.
fn select<'a>(
    settings: &'a ModelsSettings,
    ids: &[String],
) -> Result<Vec<(&'a String, &'a ModelSpec)>, ModelsError> {
    if ids.is_empty() {
        return Ok(settings.catalog.iter().collect());
    }
    ids.iter()
        .map(|id| {
            settings.catalog.get_key_value(id).ok_or_else(|| {
                let known: Vec<_> = settings.catalog.keys().map(String::as_str).collect();
                ModelsError::NotInCatalog { id: id.clone(), configured: known.join(", ") }
            })
        })
        .collect()
}

/// Pulls the selected models into the cache; stops at the first failure,
/// naming the model.
pub async fn pull(settings: &ModelsSettings, ids: &[String], progress: Progress) -> Result<(), ModelsError> {
    let selected = select(settings, ids)?;
    let cache = ModelCache::from_environment();
    let puller = Puller::new(&settings.index_url, cache).map_err(ModelsError::Puller)?;
    for (id, spec) in selected {
        let started = Instant::now();
        let bar = ProgressBar::hidden();
        if progress == Progress::Bar {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(id.clone());
        }
        let on_event = |event: PullEvent| match event {
            PullEvent::Downloading { total, resumed_from } => {
                bar.set_length(total.unwrap_or(0));
                bar.set_position(resumed_from);
                if progress == Progress::Log {
                    info!(model = id.as_str(), total_bytes = total, resumed_from, "downloading model");
                }
            }
            PullEvent::Progress { bytes } => bar.inc(bytes),
            PullEvent::Extracting => bar.set_message(format!("{id} (extracting)")),
        };
        let outcome = puller
            .pull(id, spec, &on_event)
            .await
            .map_err(|source| ModelsError::Pull { id: id.clone(), source });
        bar.finish_and_clear();
        let outcome = outcome?;
        let seconds = started.elapsed().as_secs_f64();
        let said = match outcome {
            PullOutcome::AlreadyCached => "already in the cache".to_owned(),
            PullOutcome::Pulled { downloaded } => {
                format!("pulled ({downloaded} bytes downloaded, {seconds:.1} s)")
            }
            PullOutcome::Local => "local source checked".to_owned(),
        };
        match progress {
            Progress::Bar => eprintln!("{id}: {said}"),
            Progress::Log => info!(model = id.as_str(), outcome = said.as_str(), "model ready on disk"),
        }
    }
    Ok(())
}

/// The ids of configured models whose files are not all there.
pub fn missing(settings: &ModelsSettings) -> Vec<String> {
    let cache = ModelCache::from_environment();
    settings
        .catalog
        .iter()
        .filter(|(id, spec)| cache.locate(id, spec).is_none())
        .map(|(id, _)| id.clone())
        .collect()
}

/// One line per configured model: id, kind, source, and where its files
/// are (or `missing`).
pub fn list(settings: &ModelsSettings) -> String {
    let cache = ModelCache::from_environment();
    let mut rows: BTreeMap<&str, [String; 4]> = BTreeMap::new();
    for (id, spec) in &settings.catalog {
        let status = match cache.locate(id, spec) {
            Some(ModelFiles::Directory(path) | ModelFiles::File(path)) => path.display().to_string(),
            None => "missing (blaze models pull)".to_owned(),
        };
        let kind = serde_json::to_value(spec.kind).ok().and_then(|kind| kind.as_str().map(str::to_owned));
        rows.insert(id, [id.clone(), kind.unwrap_or_default(), spec.source.clone(), status]);
    }
    let headers = ["ID", "KIND", "SOURCE", "FILES"];
    let widths: Vec<usize> = (0..4)
        .map(|column| {
            rows.values().map(|row| row[column].len()).chain([headers[column].len()]).max().unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 4]| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut text = format!("cache: {}\n", cache.root().display());
    text += &line(headers);
    for row in rows.values() {
        text += &line([&row[0], &row[1], &row[2], &row[3]]);
    }
    text
}
