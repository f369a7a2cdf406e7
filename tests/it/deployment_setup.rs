//! What a deployment is built and configured from, beside the files
//! `deployment_files.rs` checks with their tools: the images' flags per
//! architecture (docker buildx), so an arm64 image never sees x86-only
//! flags, and the env files compose reads, which must hold no secret.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `docker/rustflags.sh` as buildx runs it on each platform: `uname -m`
/// says the architecture.
fn rustflags_on(architecture: &str, cpu_level: Option<&str>) -> String {
    build_environment_on(architecture, cpu_level, "RUSTFLAGS")
}

/// One variable `docker/rustflags.sh` leaves for the cargo steps.
fn build_environment_on(architecture: &str, cpu_level: Option<&str>, variable: &str) -> String {
    let bin = tempfile::tempdir().expect("a directory");
    let uname = bin.path().join("uname");
    std::fs::write(&uname, format!("#!/bin/sh\necho {architecture}\n")).expect("written");
    let mut permissions = std::fs::metadata(&uname).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&uname, permissions).expect("executable");
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(format!(". docker/rustflags.sh && printf '%s' \"${variable}\""))
        .current_dir(root())
        .env("PATH", path);
    command.env_remove("CPU_LEVEL").env_remove("RUSTFLAGS").env_remove("JEMALLOC_SYS_WITH_LG_PAGE");
    if let Some(level) = cpu_level {
        command.env("CPU_LEVEL", level);
    }
    let output = command.output().expect("sh runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[test]
fn image_builds_use_x86_flags_on_x86_64_only() {
    assert_eq!(rustflags_on("x86_64", None), "-C target-cpu=x86-64-v3");
    assert_eq!(rustflags_on("x86_64", Some("x86-64-v4")), "-C target-cpu=x86-64-v4");
    // arm64 (and anything else) builds for the generic target: no x86
    // level, and not `native` (the build host's CPU).
    assert_eq!(rustflags_on("aarch64", Some("x86-64-v4")), "");
    // jemalloc on arm64 assumes 64 KiB pages, which also run on 4 KiB
    // kernels; x86-64 keeps the build host's (4 KiB everywhere).
    assert_eq!(build_environment_on("aarch64", None, "JEMALLOC_SYS_WITH_LG_PAGE"), "16");
    assert_eq!(build_environment_on("x86_64", None, "JEMALLOC_SYS_WITH_LG_PAGE"), "");
    // .cargo/config.toml's native CPU and clang wrappers are x86-64's.
    let cargo = std::fs::read_to_string(root().join(".cargo/config.toml")).expect("config");
    for line in cargo.lines().filter(|line| line.contains("native") || line.contains("llama-c")) {
        if line.trim_start().starts_with('#') {
            continue;
        }
        assert!(line.contains("x86_64") || line.starts_with("rustflags"), "not x86-64 only: {line}");
    }
    assert!(cargo.contains("[target.x86_64-unknown-linux-gnu]\nrustflags"));
}

#[test]
fn no_secret_is_committed_and_the_env_examples_cover_what_compose_needs() {
    let compose = std::fs::read_to_string(root().join("docker/docker-compose.yml")).expect("compose");
    let examples = std::fs::read_to_string(root().join("docker/.env.example")).expect(".env.example");
    let blaze_example =
        std::fs::read_to_string(root().join("docker/blaze.env.example")).expect("blaze.env.example");
    // Every variable compose interpolates is in the example.
    for variable in compose.split("${").skip(1) {
        let name: String = variable
            .chars()
            .take_while(|character| character.is_ascii_alphanumeric() || *character == '_')
            .collect();
        if name != "BLAZE_GIT_SHA" {
            assert!(examples.contains(&format!("\n{name}=")), "{name} is not in docker/.env.example");
        }
    }
    // Secrets are placeholders or empty there, and required in compose.
    for line in examples.lines().chain(blaze_example.lines()) {
        if line.contains("PASSWORD=") || line.contains("PEPPER=") || line.contains("BOOTSTRAP_KEY=") {
            let value = line.split_once('=').unwrap().1;
            assert!(value.is_empty() || value == "change-me", "a secret in an example: {line}");
        }
    }
    for required in ["POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "ELASTIC_PASSWORD", "KIBANA_PASSWORD"] {
        assert!(compose.contains(&format!("${{{required}:?")), "{required} is not required by compose");
    }
    let ignored = std::fs::read_to_string(root().join(".gitignore")).expect(".gitignore");
    for file in [
        "docker/.env",
        "docker/blaze.env",
        "docker/nginx/tls/",
        "docker/elasticsearch/credentials/blaze_password",
    ] {
        assert!(ignored.lines().any(|line| line == file), "{file} is not ignored by git");
    }
}
