//! The command line of the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Output};

use common::BIN;

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
    for arguments in
        [&["--help"][..], &["serve", "--help"], &["config", "--help"], &["config", "check", "--help"]]
    {
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
    std::io::Write::write_all(&mut file, b"server:\n  workers: many\nlogging:\n  level: debug\n").unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let output = blaze(
        &["config", "check", "--config", &path],
        &[("BLAZE__SERVER__KEEP_ALIVE_S", "-5"), ("BLAZE__PERFORMANCE__COMPRESION", "true")],
    );
    assert_eq!(output.status.code(), Some(1));
    let errors = text(&output.stderr);
    assert!(errors.contains(&format!("server.workers (set in {path})")), "{errors}");
    assert!(errors.contains(&format!("logging.level (set in {path}): unknown key `logging`")), "{errors}");
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
