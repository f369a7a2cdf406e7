//! How an encoder's token states become one vector: the pooling and the
//! normalization its sentence-transformers files name (`modules.json`,
//! and the Pooling module's `config.json`). Without `modules.json` a
//! model is pooled as sentence-transformers pools a bare encoder: the mean
//! of its tokens, normalized.

use std::path::Path;

use serde::Deserialize;

use super::load_error;
use crate::inference::engine::EngineError;

/// Which token states make the vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The mean of every token's state.
    Mean,
    /// The first token's ([CLS]).
    Cls,
    /// The last token's.
    LastToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pooling {
    pub mode: PoolingMode,
    /// Scaled to unit length (a Normalize module follows the pooling).
    pub normalize: bool,
}

impl Default for Pooling {
    fn default() -> Self {
        Self { mode: PoolingMode::Mean, normalize: true }
    }
}

#[derive(Debug, Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// The Pooling module's `config.json`: one mode on.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PoolingConfig {
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    pooling_mode_weightedmean_tokens: bool,
    pooling_mode_lasttoken: bool,
}

impl Pooling {
    /// The pooling `directory`'s files name; a module or a mode the engine
    /// does not run is refused, named.
    pub fn read(directory: &Path) -> Result<Self, EngineError> {
        let modules = match std::fs::read(directory.join("modules.json")) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(error) => return Err(load_error(format!("modules.json: {error}"))),
        };
        let modules: Vec<Module> =
            serde_json::from_slice(&modules).map_err(|error| load_error(format!("modules.json: {error}")))?;
        let mut pooling = None;
        let mut normalize = false;
        for (index, module) in modules.iter().enumerate() {
            match module.kind.rsplit('.').next().unwrap_or_default() {
                "Transformer" if index == 0 => {}
                "Pooling" if pooling.is_none() => pooling = Some(mode(&directory.join(&module.path))?),
                "Normalize" if pooling.is_some() => normalize = true,
                _ => {
                    return Err(load_error(format!(
                    "modules.json has a {} module (module {index}) that the embedding engine does not run; \
                         it runs a Transformer, then a Pooling, then optionally a Normalize",
                    module.kind
                )))
                }
            }
        }
        let mode = pooling.ok_or_else(|| load_error("modules.json has no Pooling module"))?;
        Ok(Self { mode, normalize })
    }

    /// The vector of one sequence's token states (`rows`, `width` wide),
    /// written into `out`.
    pub fn pool(&self, rows: &[f32], width: usize, out: &mut [f32]) {
        let count = rows.len() / width.max(1);
        match self.mode {
            PoolingMode::Mean => {
                out.fill(0.0);
                for row in rows.chunks_exact(width) {
                    for (out, value) in out.iter_mut().zip(row) {
                        *out += value;
                    }
                }
                let inverse_count = 1.0 / count.max(1) as f32;
                out.iter_mut().for_each(|value| *value *= inverse_count);
            }
            PoolingMode::Cls => out.copy_from_slice(&rows[..width]),
            PoolingMode::LastToken => {
                out.copy_from_slice(&rows[(count.max(1) - 1) * width..count.max(1) * width])
            }
        }
        if self.normalize {
            let norm = out.iter().map(|value| value * value).sum::<f32>().sqrt();
            let inverse_norm = 1.0 / norm.max(1e-12);
            out.iter_mut().for_each(|value| *value *= inverse_norm);
        }
    }
}

fn mode(module: &Path) -> Result<PoolingMode, EngineError> {
    let path = module.join("config.json");
    let bytes = std::fs::read(&path).map_err(|error| load_error(format!("{}: {error}", path.display())))?;
    let config: PoolingConfig =
        serde_json::from_slice(&bytes).map_err(|error| load_error(format!("{}: {error}", path.display())))?;
    let unsupported = [
        (config.pooling_mode_max_tokens, "max_tokens"),
        (config.pooling_mode_mean_sqrt_len_tokens, "mean_sqrt_len_tokens"),
        (config.pooling_mode_weightedmean_tokens, "weightedmean_tokens"),
    ];
    if let Some((_, name)) = unsupported.iter().find(|(on, _)| *on) {
        return Err(load_error(format!(
            "{} asks for pooling_mode_{name}; the embedding engine pools by mean, CLS or last token",
            path.display()
        )));
    }
    match (config.pooling_mode_mean_tokens, config.pooling_mode_cls_token, config.pooling_mode_lasttoken) {
        (true, false, false) => Ok(PoolingMode::Mean),
        (false, true, false) => Ok(PoolingMode::Cls),
        (false, false, true) => Ok(PoolingMode::LastToken),
        _ => Err(load_error(format!(
            "{} must turn on exactly one of pooling_mode_mean_tokens, pooling_mode_cls_token and pooling_mode_lasttoken",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model directory with `modules` and a Pooling config of `pooling`.
    fn directory(modules: &str, pooling: &str) -> tempfile::TempDir {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("modules.json"), modules).unwrap();
        std::fs::create_dir(directory.path().join("1_Pooling")).unwrap();
        std::fs::write(directory.path().join("1_Pooling/config.json"), pooling).unwrap();
        directory
    }

    const TRANSFORMER: &str =
        r#"{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}"#;
    const POOLING: &str =
        r#"{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}"#;
    const NORMALIZE: &str =
        r#"{"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}"#;

    #[test]
    fn the_model_files_name_the_pooling_and_the_normalization() {
        let none = tempfile::tempdir().unwrap();
        assert_eq!(
            Pooling::read(none.path()).unwrap(),
            Pooling::default(),
            "a bare encoder: mean, normalized"
        );
        let cls = directory(
            &format!("[{TRANSFORMER}, {POOLING}, {NORMALIZE}]"),
            r#"{"pooling_mode_cls_token": true}"#,
        );
        assert_eq!(Pooling::read(cls.path()).unwrap(), Pooling { mode: PoolingMode::Cls, normalize: true });
        let last = directory(
            &format!("[{TRANSFORMER}, {POOLING}]"),
            r#"{"pooling_mode_lasttoken": true, "word_embedding_dimension": 4}"#,
        );
        assert_eq!(
            Pooling::read(last.path()).unwrap(),
            Pooling { mode: PoolingMode::LastToken, normalize: false }
        );
        let mean = directory(
            &format!("[{TRANSFORMER}, {POOLING}, {NORMALIZE}]"),
            r#"{"pooling_mode_mean_tokens": true}"#,
        );
        assert_eq!(Pooling::read(mean.path()).unwrap(), Pooling::default());
    }

    #[test]
    fn modes_and_modules_the_engine_does_not_run_are_refused_by_name() {
        let cases = [
            (format!("[{TRANSFORMER}, {POOLING}]"), r#"{"pooling_mode_max_tokens": true}"#, "pooling_mode_max_tokens"),
            (format!("[{TRANSFORMER}, {POOLING}]"), r#"{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true}"#, "exactly one"),
            (format!("[{TRANSFORMER}, {POOLING}, {{\"idx\": 2, \"path\": \"2_Dense\", \"type\": \"sentence_transformers.models.Dense\"}}]"), r#"{"pooling_mode_mean_tokens": true}"#, "sentence_transformers.models.Dense"),
            (format!("[{TRANSFORMER}]"), "{}", "no Pooling module"),
            ("not json".to_owned(), "{}", "modules.json"),
        ];
        for (modules, pooling, named) in cases {
            let error = Pooling::read(directory(&modules, pooling).path()).unwrap_err().to_string();
            assert!(error.contains(named), "{modules}: {error}");
        }
    }

    #[test]
    fn each_mode_pools_its_tokens_and_normalizes_when_asked() {
        let rows = [3.0, 4.0, 0.0, 0.0, 1.0, 2.0];
        let mut out = [0.0; 2];
        Pooling { mode: PoolingMode::Cls, normalize: false }.pool(&rows, 2, &mut out);
        assert_eq!(out, [3.0, 4.0]);
        Pooling { mode: PoolingMode::Cls, normalize: true }.pool(&rows, 2, &mut out);
        assert_eq!(out, [0.6, 0.8]);
        Pooling { mode: PoolingMode::LastToken, normalize: false }.pool(&rows, 2, &mut out);
        assert_eq!(out, [1.0, 2.0]);
        Pooling { mode: PoolingMode::Mean, normalize: false }.pool(&rows, 2, &mut out);
        assert_eq!(out, [4.0 / 3.0, 2.0]);
    }
}
