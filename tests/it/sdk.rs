//! The official OpenAI Python SDK against a real Blaze: the scripts in
//! tests/sdk/ run in a venv under the cache dir that holds the pinned
//! packages of tests/sdk/requirements.txt (made once, remade when the
//! pins change). pip needs the Python package index the first time; if
//! it cannot install them, the test fails and says why.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{decoding_turn, Server, ADMIN_KEY};

/// Held while the venv is checked or made: the SDK tests run side by side.
static VENV_MADE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The venv with the pinned SDK, made or remade as needed.
fn sdk_venv() -> PathBuf {
    let _made = VENV_MADE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let requirements = root.join("tests/sdk/requirements.txt");
    let pins = std::fs::read_to_string(&requirements).expect("tests/sdk/requirements.txt");
    let cache = std::env::var_os("BLAZE_MODELS_DIR")
        .map(PathBuf::from)
        .and_then(|models| models.parent().map(Path::to_path_buf))
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/blaze")))
        .expect("BLAZE_MODELS_DIR or HOME");
    let venv = cache.join("sdk-venv");
    let stamp = venv.join("requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(pins.as_str()) {
        return venv;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().expect("python3 runs");
    assert!(made.success(), "python3 -m venv {} failed", venv.display());
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "--no-deps", "-r"])
        .arg(&requirements)
        .output()
        .expect("pip runs");
    assert!(
        installed.status.success(),
        "pip could not install tests/sdk/requirements.txt: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    std::fs::write(&stamp, pins).expect("stamp written");
    venv
}

/// Runs `script` against the API at `base_url`; its output on success.
fn run_script(venv: &Path, script: &str, base_url: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk").join(script);
    let output = Command::new(venv.join("bin/python"))
        .arg(&script)
        .env("BLAZE_BASE_URL", base_url)
        .env("BLAZE_API_KEY", ADMIN_KEY)
        .output()
        .expect("the venv's python runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{} failed:\n{stdout}\n{stderr}", script.display());
    stdout.into_owned()
}

#[tokio::test]
async fn the_openai_sdk_drives_structured_outputs() {
    let venv = tokio::task::spawn_blocking(sdk_venv).await.unwrap();
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let base_url = server.url("/v1");
    let output = tokio::task::spawn_blocking(move || run_script(&venv, "structured_outputs.py", &base_url))
        .await
        .unwrap();
    assert!(output.contains("errors: ok"), "{output}");
}

#[tokio::test]
async fn the_openai_sdk_drives_tool_calls() {
    let venv = tokio::task::spawn_blocking(sdk_venv).await.unwrap();
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let base_url = server.url("/v1");
    let output = tokio::task::spawn_blocking(move || run_script(&venv, "tools.py", &base_url)).await.unwrap();
    assert!(output.contains("errors: ok"), "{output}");
}

#[tokio::test]
async fn the_openai_sdk_drives_the_responses_api() {
    let venv = tokio::task::spawn_blocking(sdk_venv).await.unwrap();
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let base_url = server.url("/v1");
    let output =
        tokio::task::spawn_blocking(move || run_script(&venv, "responses.py", &base_url)).await.unwrap();
    assert!(output.contains("errors: ok"), "{output}");
}

#[tokio::test]
async fn the_openai_sdk_drives_choices_and_logprobs() {
    let venv = tokio::task::spawn_blocking(sdk_venv).await.unwrap();
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let base_url = server.url("/v1");
    let output = tokio::task::spawn_blocking(move || run_script(&venv, "choices_logprobs.py", &base_url))
        .await
        .unwrap();
    assert!(output.contains("errors: ok"), "{output}");
}
