//! Records which build this is (commit, compiler, profile) for
//! `blaze --version`, `/health/detailed` and `blaze_build_info`.

use std::path::Path;
use std::process::Command;

fn main() {
    // A Docker build has no .git in its context; the image passes the
    // commit in as a build argument instead.
    println!("cargo:rerun-if-env-changed=BLAZE_GIT_SHA");
    let given_sha = std::env::var("BLAZE_GIT_SHA").ok().filter(|sha| !sha.is_empty());
    let git_sha = given_sha.or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .map(|sha| sha.trim().to_owned())
    });
    let git_sha = git_sha.unwrap_or_else(|| "unknown".to_owned());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|version| version.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=BLAZE_GIT_SHA={git_sha}");
    println!("cargo:rustc-env=BLAZE_RUSTC_VERSION={rustc_version}");
    println!("cargo:rustc-env=BLAZE_BUILD_PROFILE={profile}");
    for watched in [".git/HEAD", ".git/refs/heads"] {
        if Path::new(watched).exists() {
            println!("cargo:rerun-if-changed={watched}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
