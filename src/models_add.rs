//! `blaze models add ID PATH --kind chat|embedding`: a model from anywhere
//! on disk, its files checked the way the server will load them (a chat
//! GGUF with its architecture, tokenizer and chat template; an embedding
//! directory with its BERT config, tokenizer and weights), then its
//! catalog entry written into the `--config` file.

use std::io::Read;
use std::path::{Path, PathBuf};

use blaze_actors::inference::{Bert, ChatModel};
use sha2::{Digest, Sha256};
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

use crate::settings::{ConfigSources, Settings};

/// The kinds a model can be added as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AddKind {
    Chat,
    Embedding,
    /// Cross-encoders for `/v1/rerank`: not served yet, refused.
    Rerank,
}

/// llama.cpp architectures of embedding encoders, not chat models.
const ENCODER_ARCHITECTURES: &[&str] =
    &["bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder", "modern-bert"];

/// Why a model cannot be added; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("models add writes the entry into a config file: pass --config FILE")]
    NoConfigFile,
    #[error("`{0}` is not a model id: 1 to 64 letters, digits, `.`, `_` or `-`")]
    BadId(String),
    #[error("`{0}` is already in the catalog; pick another id")]
    Exists(String),
    #[error("{0}: no such file or directory")]
    Missing(String),
    #[error("{path}: {problem}")]
    BadFiles { path: String, problem: String },
    #[error("rerank models are not served yet; add a chat or an embedding model")]
    RerankNotServed,
    #[error("{path}: {problem}")]
    ConfigFile { path: String, problem: String },
    #[error("the configuration with this entry is invalid: {0}")]
    Invalid(String),
}

/// Checks the model at `path` and writes its entry under `id` into the
/// config file of `sources`. Returns the entry as written, for the user.
pub fn add(sources: &ConfigSources, id: &str, path: &Path, kind: AddKind) -> Result<String, AddError> {
    let config = sources.file.clone().ok_or(AddError::NoConfigFile)?;
    let valid_id = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-'));
    if !valid_id {
        return Err(AddError::BadId(id.to_owned()));
    }
    // The configuration as it stands (without the file if it is new).
    let current = ConfigSources {
        profile: sources.profile.clone(),
        file: config.exists().then(|| config.clone()),
        environment: sources.environment.clone(),
    };
    let settings = Settings::load(&current).map_err(|errors| AddError::Invalid(joined(&errors)))?;
    if settings.models.catalog.contains_key(id) {
        return Err(AddError::Exists(id.to_owned()));
    }
    let path = std::fs::canonicalize(path).map_err(|_| AddError::Missing(path.display().to_string()))?;
    let entry = match kind {
        AddKind::Chat => chat_entry(&path)?,
        AddKind::Embedding => embedding_entry(&path)?,
        AddKind::Rerank => return Err(AddError::RerankNotServed),
    };
    let written = write_entry(&config, id, entry)?;
    // The file as written must still make a valid configuration; if not,
    // it goes back as it was.
    if let Err(errors) = Settings::load(sources) {
        restore(&config, written.previous.as_deref())?;
        return Err(AddError::Invalid(joined(&errors)));
    }
    Ok(written.entry)
}

fn joined(errors: &[impl std::fmt::Display]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

fn bad(path: &Path, problem: impl Into<String>) -> AddError {
    AddError::BadFiles { path: path.display().to_string(), problem: problem.into() }
}

/// A chat model: a GGUF file llama.cpp loads, of a decoder's architecture,
/// with a chat template; pinned by its sha256.
fn chat_entry(path: &Path) -> Result<Hash, AddError> {
    if !path.is_file() {
        return Err(bad(path, "a chat model is one .gguf file"));
    }
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut file| file.read_exact(&mut magic));
    if read.is_err() || &magic != b"GGUF" {
        return Err(bad(path, "not a GGUF file (it does not start with GGUF)"));
    }
    let model = ChatModel::load(path, 2048).map_err(|error| bad(path, error.to_string()))?;
    if let Some(architecture) =
        model.architecture().filter(|name| ENCODER_ARCHITECTURES.contains(&name.as_str()))
    {
        return Err(bad(
            path,
            format!("its architecture `{architecture}` is an embedding encoder, not a chat model"),
        ));
    }
    let context_length = model.context_length();
    drop(model);
    let mut entry = base_entry("chat", path, &sha256_of(path)?);
    for (key, value) in [
        ("max_batch", 8),
        ("max_wait_ms", 5),
        ("queue_capacity", 256),
        ("context_length", context_length as i64),
    ] {
        entry.insert(Yaml::String(key.to_owned()), Yaml::Integer(value));
    }
    Ok(entry)
}

/// An embedding model: a directory in the Hugging Face layout with a
/// BERT `config.json`, `tokenizer.json` and `model.safetensors`, loaded as
/// the engine loads it.
fn embedding_entry(path: &Path) -> Result<Hash, AddError> {
    if !path.is_dir() {
        return Err(bad(
            path,
            "an embedding model is a directory with config.json, tokenizer.json and model.safetensors",
        ));
    }
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        if !path.join(file).is_file() {
            return Err(bad(path, format!("{file} is missing")));
        }
    }
    Bert::load(path, 1).map_err(|error| bad(path, error.to_string()))?;
    let mut entry = base_entry("embedding", path, "");
    for (key, value) in [("max_batch", 32), ("max_wait_ms", 2), ("queue_capacity", 1024)] {
        entry.insert(Yaml::String(key.to_owned()), Yaml::Integer(value));
    }
    Ok(entry)
}

fn base_entry(kind: &str, path: &Path, sha256: &str) -> Hash {
    let mut entry = Hash::new();
    let mut put = |key: &str, value: Yaml| entry.insert(Yaml::String(key.to_owned()), value);
    put("kind", Yaml::String(kind.to_owned()));
    put("source", Yaml::String(path.display().to_string()));
    put("sha256", Yaml::String(sha256.to_owned()));
    put("workers", Yaml::Integer(1));
    put("threads", Yaml::Integer(std::thread::available_parallelism().map_or(1, |count| count.get()) as i64));
    entry
}

fn sha256_of(path: &Path) -> Result<String, AddError> {
    let mut file = std::fs::File::open(path).map_err(|error| bad(path, error.to_string()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|error| bad(path, error.to_string()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// What writing the entry did: the file before (to restore), the entry.
struct Written {
    previous: Option<String>,
    entry: String,
}

/// Adds `models.catalog.<id>` to the YAML file `config` (made if missing),
/// keeping its other keys (its comments are not kept: the file is written
/// anew).
fn write_entry(config: &PathBuf, id: &str, entry: Hash) -> Result<Written, AddError> {
    let config_error = |problem: String| AddError::ConfigFile { path: config.display().to_string(), problem };
    let previous = match std::fs::read_to_string(config) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(config_error(error.to_string())),
    };
    let mut root = match previous.as_deref().map(YamlLoader::load_from_str) {
        None => Hash::new(),
        Some(Err(error)) => return Err(config_error(format!("not YAML: {error}"))),
        Some(Ok(documents)) => match documents.into_iter().next() {
            None | Some(Yaml::Null) => Hash::new(),
            Some(Yaml::Hash(root)) => root,
            Some(_) => return Err(config_error("its top level is not a mapping".to_owned())),
        },
    };
    let section = |parent: &mut Hash, name: &str| -> Result<Hash, AddError> {
        match parent.remove(&Yaml::String(name.to_owned())) {
            None | Some(Yaml::Null) => Ok(Hash::new()),
            Some(Yaml::Hash(hash)) => Ok(hash),
            Some(_) => Err(config_error(format!("`{name}` is not a mapping"))),
        }
    };
    let mut models = section(&mut root, "models")?;
    let mut catalog = section(&mut models, "catalog")?;
    let mut shown = String::new();
    YamlEmitter::new(&mut shown)
        .dump(&Yaml::Hash(Hash::from_iter([(Yaml::String(id.to_owned()), Yaml::Hash(entry.clone()))])))
        .map_err(|error| config_error(error.to_string()))?;
    catalog.insert(Yaml::String(id.to_owned()), Yaml::Hash(entry));
    models.insert(Yaml::String("catalog".to_owned()), Yaml::Hash(catalog));
    root.insert(Yaml::String("models".to_owned()), Yaml::Hash(models));
    let mut text = String::new();
    YamlEmitter::new(&mut text).dump(&Yaml::Hash(root)).map_err(|error| config_error(error.to_string()))?;
    text.push('\n');
    replace(config, &text).map_err(config_error)?;
    Ok(Written { previous, entry: shown.trim_start_matches("---\n").to_owned() })
}

/// Writes `text` to `path` through a file beside it, renamed over it.
fn replace(path: &Path, text: &str) -> Result<(), String> {
    let temporary = path.with_extension("yaml.new");
    std::fs::write(&temporary, text).map_err(|error| error.to_string())?;
    std::fs::rename(&temporary, path).map_err(|error| error.to_string())
}

fn restore(config: &Path, previous: Option<&str>) -> Result<(), AddError> {
    let restored = match previous {
        Some(text) => replace(config, text),
        None => std::fs::remove_file(config).map_err(|error| error.to_string()),
    };
    restored.map_err(|problem| AddError::ConfigFile { path: config.display().to_string(), problem })
}
