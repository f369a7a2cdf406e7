//! `blaze models add` on the real model files: a chat GGUF and an
//! embedding directory are checked and written into the --config file
//! (which then serves them), and each bad file, id or command is refused
//! with what is wrong, the file left as it was.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use blaze::settings::{ConfigSources, Settings};
use blaze_actors::router::{ModelCache, ModelFiles};
use serde_json::{json, Value};

use crate::common::{client, Server, BIN};

fn blaze(arguments: &[&str]) -> Output {
    Command::new(BIN).args(arguments).env_remove("BLAZE_PROFILE").output().expect("blaze runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The cached files of catalog model `id` (pulled first if missing).
fn cached(id: &str) -> PathBuf {
    let settings = Settings::load(&ConfigSources::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime
        .block_on(blaze::models::pull(&settings.models, &[id.to_owned()], blaze::models::Progress::Bar))
        .unwrap();
    match ModelCache::from_environment().locate(id, &settings.models.catalog[id]) {
        Some(ModelFiles::Directory(directory)) => directory,
        other => panic!("{other:?}"),
    }
}

fn add(config: &Path, id: &str, path: &Path, kind: &str) -> Output {
    let (config, path) = (config.to_str().unwrap(), path.to_str().unwrap());
    blaze(&["--config", config, "models", "add", id, path, "--kind", kind])
}

#[test]
fn models_add_checks_the_files_and_writes_the_entry_or_says_what_is_wrong() {
    let chat = cached("smollm2-135m-instruct").join("model.gguf");
    let embedding = cached("all-minilm-l6-v2");
    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("blaze.yaml");
    std::fs::write(&config, "server:\n  port: 9393\n").unwrap();

    let output = add(&config, "my-chat", &chat, "chat");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("kind: chat"), "{}", text(&output.stdout));
    let output = add(&config, "my-embedder", &embedding, "embedding");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains("port: 9393"), "the file's other keys are kept: {written}");
    let checked = blaze(&["--config", config.to_str().unwrap(), "config", "check"]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let effective = text(&checked.stdout);
    assert!(
        effective.contains(&format!("source: {}", chat.canonicalize().unwrap().display())),
        "{effective}"
    );
    assert!(effective.contains("context_length: 2048"), "{effective}");
    let listed = text(&blaze(&["--config", config.to_str().unwrap(), "models", "list"]).stdout);
    assert!(listed.contains("my-chat") && listed.contains("my-embedder"), "{listed}");

    // Bad files: a cut GGUF, a file that is no GGUF, a directory without
    // its tokenizer, a config of another architecture.
    let truncated = directory.path().join("truncated.gguf");
    let bytes = std::fs::read(&chat).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let not_gguf = directory.path().join("notes.gguf");
    std::fs::write(&not_gguf, "hello").unwrap();
    let no_tokenizer = directory.path().join("no-tokenizer");
    std::fs::create_dir(&no_tokenizer).unwrap();
    let roberta = directory.path().join("roberta");
    std::fs::create_dir(&roberta).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::os::unix::fs::symlink(embedding.join(file), no_tokenizer.join(file)).unwrap();
    }
    for file in ["tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(embedding.join(file), roberta.join(file)).unwrap();
    }
    let mut bert: Value =
        serde_json::from_slice(&std::fs::read(embedding.join("config.json")).unwrap()).unwrap();
    bert["model_type"] = json!("roberta");
    std::fs::write(roberta.join("config.json"), bert.to_string()).unwrap();
    let nowhere = directory.path().join("nowhere.gguf");
    let cases = [
        ("my-chat", &chat, "chat", "already in the catalog"),
        ("bad id!", &chat, "chat", "is not a model id"),
        ("cut", &truncated, "chat", "cannot load the model"),
        ("notes", &not_gguf, "chat", "not a GGUF file"),
        ("directory", &embedding, "chat", "one .gguf file"),
        ("file", &chat, "embedding", "is a directory with config.json"),
        ("no-tokenizer", &no_tokenizer, "embedding", "tokenizer.json is missing"),
        ("roberta", &roberta, "embedding", "`roberta`"),
        ("nowhere", &nowhere, "chat", "no such file or directory"),
        ("reranker", &embedding, "rerank", "not served yet"),
    ];
    for (id, path, kind, problem) in cases {
        let output = add(&config, id, path, kind);
        assert_eq!(output.status.code(), Some(1), "{id}");
        assert!(text(&output.stderr).contains(problem), "{id}: {}", text(&output.stderr));
    }
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written, "refusals leave the file as it was");
    let output = blaze(&["models", "add", "x", chat.to_str().unwrap(), "--kind", "chat"]);
    assert!(text(&output.stderr).contains("--config"), "{}", text(&output.stderr));
}

#[tokio::test]
async fn an_added_model_serves_under_its_new_id() {
    let embedding = tokio::task::spawn_blocking(|| cached("all-minilm-l6-v2")).await.unwrap();
    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("new.yaml");
    let output = add(&config, "my-embedder", &embedding, "embedding");
    assert!(output.status.success(), "a missing file is made: {}", text(&output.stderr));
    let server = Server::start(&[], &["--config", config.to_str().unwrap()]).await;
    let embed = |model: &str| {
        let request =
            client().post(server.url("/v1/embeddings")).json(&json!({"model": model, "input": "hello"}));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap()["data"][0]["embedding"].clone() }
    };
    let added = embed("my-embedder").await;
    assert!(added.is_array(), "{added}");
    assert_eq!(added, embed("all-minilm-l6-v2").await, "the same files, the same vectors");
}

/// A directory of all-MiniLM-L6-v2's files with sentence-transformers
/// modules: a Pooling of `pooling` (its config), a Normalize if `normalize`.
fn with_modules(embedding: &Path, root: &Path, name: &str, pooling: Value, normalize: bool) -> PathBuf {
    let directory = root.join(name);
    std::fs::create_dir_all(directory.join("1_Pooling")).unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(embedding.join(file), directory.join(file)).unwrap();
    }
    let mut modules = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if normalize {
        modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
    }
    std::fs::write(directory.join("modules.json"), Value::Array(modules).to_string()).unwrap();
    std::fs::write(directory.join("1_Pooling/config.json"), pooling.to_string()).unwrap();
    directory
}

#[tokio::test]
async fn the_pooling_and_normalization_come_from_the_model_files() {
    let embedding = tokio::task::spawn_blocking(|| cached("all-minilm-l6-v2")).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("pooling.yaml");
    let variants = [
        ("mean-normalized", json!({"pooling_mode_mean_tokens": true}), true),
        ("cls-normalized", json!({"pooling_mode_cls_token": true}), true),
        ("last-raw", json!({"pooling_mode_lasttoken": true}), false),
    ];
    for (name, pooling, normalize) in &variants {
        let directory = with_modules(&embedding, root.path(), name, pooling.clone(), *normalize);
        let output = add(&config, name, &directory, "embedding");
        assert!(output.status.success(), "{name}: {}", text(&output.stderr));
    }
    // Without modules.json: pooled as a bare encoder, by mean, normalized.
    let bare = root.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(embedding.join(file), bare.join(file)).unwrap();
    }
    assert!(add(&config, "bare", &bare, "embedding").status.success());
    let dense =
        with_modules(&embedding, root.path(), "dense", json!({"pooling_mode_mean_tokens": true}), true);
    let mut modules: Value =
        serde_json::from_slice(&std::fs::read(dense.join("modules.json")).unwrap()).unwrap();
    modules
        .as_array_mut()
        .unwrap()
        .push(json!({"idx": 3, "path": "3_Dense", "type": "sentence_transformers.models.Dense"}));
    std::fs::write(dense.join("modules.json"), modules.to_string()).unwrap();
    let refused = add(&config, "dense", &dense, "embedding");
    assert!(
        text(&refused.stderr).contains("sentence_transformers.models.Dense"),
        "{}",
        text(&refused.stderr)
    );

    let server = Server::start(&[], &["--config", config.to_str().unwrap()]).await;
    let embed = |model: &str| {
        let request = client()
            .post(server.url("/v1/embeddings"))
            .json(&json!({"model": model, "input": "The cat sat on the mat."}));
        async move {
            let answer = request.send().await.unwrap().json::<Value>().await.unwrap();
            let vector: Vec<f64> = answer["data"][0]["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|value| value.as_f64().unwrap())
                .collect();
            vector
        }
    };
    let norm = |vector: &[f64]| vector.iter().map(|value| value * value).sum::<f64>().sqrt();
    let catalog = embed("all-minilm-l6-v2").await;
    let bare = embed("bare").await;
    assert_eq!(bare, catalog, "the catalog's modules (mean, Normalize) are the bare encoder's default");
    assert_eq!(embed("mean-normalized").await, bare);
    let cls = embed("cls-normalized").await;
    assert!((norm(&cls) - 1.0).abs() < 1e-5 && cls != bare, "the [CLS] state, normalized");
    let last = embed("last-raw").await;
    assert!((norm(&last) - 1.0).abs() > 1e-3, "not normalized: {}", norm(&last));
    assert!(last != cls, "the [SEP] state is not the [CLS] state");
}
