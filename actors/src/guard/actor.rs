//! The Guard actor: owns the guard's background work. It watches the
//! configuration files and, when one changes, loads and compiles the new
//! patterns and swaps them in whole (a set that does not compile is
//! refused, named in the log, and the old one stays); and it forgets the
//! scores of clients that have calmed down. Handlers never send it a
//! message: they call the [`Guard`].
//!
//! Files are polled (size, modification time, content hash) rather than
//! watched through inotify: it also sees the atomic renames of editors and
//! of Kubernetes config maps, and costs one stat a second.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::{Actor, AsyncContext, Context};
use sha2::{Digest, Sha256};

use super::core::{Guard, GuardConfig, Rules};
use super::patterns::PatternError;

const POLL_EVERY: Duration = Duration::from_secs(1);
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Reads the guard's configuration again (all layers), for a reload; the
/// error is the configuration's own (the server's settings errors).
pub type LoadConfig =
    Arc<dyn Fn() -> Result<GuardConfig, Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// Why a reload is refused (the previous patterns stay).
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error("{0}")]
    Config(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Patterns(#[from] PatternError),
}

/// What a reload is driven by: the files to watch, and how to load.
#[derive(Clone)]
pub struct Reload {
    pub files: Vec<PathBuf>,
    pub load: LoadConfig,
    /// Told the number of patterns once a reload is in (the audit log).
    pub applied: Option<Arc<dyn Fn(usize) + Send + Sync>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    length: u64,
    modified: Option<SystemTime>,
    hash: [u8; 32],
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    let metadata = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    Some(Stamp {
        length: metadata.len(),
        modified: metadata.modified().ok(),
        hash: Sha256::digest(&bytes).into(),
    })
}

pub struct GuardActor {
    guard: Arc<Guard>,
    reload: Option<Reload>,
    stamps: Vec<Option<Stamp>>,
}

impl GuardActor {
    pub fn new(guard: Arc<Guard>, reload: Option<Reload>) -> Self {
        let stamps = reload.as_ref().map_or_else(Vec::new, |reload| reload.files.iter().map(stamp).collect());
        Self { guard, reload, stamps }
    }

    /// Reloads when a watched file changed: its size or time first (cheap),
    /// then its content (a touch alone does not recompile).
    fn poll(&mut self) {
        let Some(reload) = &self.reload else { return };
        let mut changed = false;
        for (path, known) in reload.files.iter().zip(self.stamps.iter_mut()) {
            let Ok(metadata) = std::fs::metadata(path) else {
                changed |= known.take().is_some();
                continue;
            };
            let same_surface = known.as_ref().is_some_and(|known| {
                known.length == metadata.len() && known.modified == metadata.modified().ok()
            });
            if same_surface {
                continue;
            }
            let now = stamp(path);
            if now.as_ref().map(|stamp| stamp.hash) != known.as_ref().map(|stamp| stamp.hash) {
                changed = true;
            }
            *known = now;
        }
        if changed {
            reload_now(&self.guard, reload);
        }
    }
}

/// Loads, compiles and swaps in the guard's configuration; on an error the
/// current rules stay. Returns whether the new rules are in.
pub fn reload_now(guard: &Guard, reload: &Reload) -> bool {
    let outcome = (reload.load)().map_err(ReloadError::Config).and_then(|config| Ok(Rules::compile(config)?));
    match outcome {
        Ok(rules) => {
            let patterns = rules.set.names.len();
            guard.replace(rules);
            metrics::counter!("blaze_guard_reloads_total", "result" => "applied").increment(1);
            tracing::info!(patterns, "guard: patterns reloaded");
            if let Some(applied) = &reload.applied {
                applied(patterns);
            }
            true
        }
        Err(error) => {
            metrics::counter!("blaze_guard_reloads_total", "result" => "refused").increment(1);
            tracing::error!(%error, "guard: the new patterns are refused; the previous ones stay");
            false
        }
    }
}

impl Actor for GuardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(SWEEP_EVERY, |actor, _| actor.guard.scores().sweep());
        if self.reload.is_some() {
            ctx.run_interval(POLL_EVERY, |actor, _| actor.poll());
        }
    }
}

crate::supervised_actor!(GuardActor);
