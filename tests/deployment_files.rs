//! The deployment files, checked statically (no Docker engine runs on
//! these machines): nginx's configuration with `nginx -t`, Prometheus's with
//! `promtool`, the shell scripts with shellcheck, and the alert rules'
//! metrics against what Blaze documents and exports. The tools come from
//! Debian's packages (`.ci/run` installs them when missing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a tool; fails loudly when it is missing or refuses.
fn run(program: &str, arguments: &[&str], directory: &Path) -> String {
    let output = Command::new(program)
        .args(arguments)
        .current_dir(directory)
        .output()
        .unwrap_or_else(|error| panic!("{program} is missing ({error}): .ci/run installs it"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{program} {arguments:?} refused:\n{text}");
    text
}

#[test]
fn nginx_accepts_the_configuration() {
    let directory = tempfile::tempdir().expect("a directory");
    let nginx = root().join("docker/nginx");
    for file in ["nginx.conf", "blaze-locations.conf", "blaze-upstream.conf"] {
        std::fs::copy(nginx.join(file), directory.path().join(file)).expect("copied");
    }
    // nginx -t resolves upstream names: the compose service names do not
    // resolve here, so the check swaps in loopback replicas (what
    // `deploy.sh native` writes), after checking the compose file's shape.
    let upstream = std::fs::read_to_string(nginx.join("blaze-upstream.conf")).expect("upstream");
    assert!(upstream.contains("keepalive") && upstream.contains("max_fails"), "{upstream}");
    std::fs::write(
        directory.path().join("blaze-upstream.conf"),
        "upstream blaze {\n    server 127.0.0.1:18080 max_fails=3 fail_timeout=10s;\n    keepalive 64;\n}\n",
    )
    .expect("written");
    let tls = directory.path().join("tls");
    std::fs::create_dir(&tls).expect("tls");
    let (key, certificate) = (tls.join("blaze.key"), tls.join("blaze.crt"));
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-days",
            "1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            certificate.to_str().unwrap(),
        ],
        directory.path(),
    );
    let prefix = directory.path().to_str().unwrap();
    let configuration = directory.path().join("nginx.conf");
    let output = run("nginx", &["-t", "-p", prefix, "-c", configuration.to_str().unwrap()], directory.path());
    assert!(output.contains("test is successful"), "{output}");
}

#[test]
fn promtool_accepts_the_scrape_configuration_and_the_alert_rules() {
    let directory = root().join("docker/prometheus");
    let output = run("promtool", &["check", "config", "prometheus.yml"], &directory);
    assert!(output.contains("SUCCESS"), "{output}");
    let output = run("promtool", &["check", "rules", "alerts.yml"], &directory);
    assert!(output.contains("SUCCESS"), "{output}");
}

#[test]
fn shellcheck_passes_every_script() {
    let mut scripts = vec![".ci/run".to_owned(), "docker/nginx/make-cert.sh".to_owned()];
    for entry in std::fs::read_dir(root().join("load/bench")).expect("load/bench") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|extension| extension == "sh") {
            scripts.push(path.strip_prefix(root()).unwrap().to_str().unwrap().to_owned());
        }
    }
    let mut arguments = vec!["-x", "-S", "warning"];
    arguments.extend(scripts.iter().map(String::as_str));
    run("shellcheck", &arguments, &root());
}

/// `blaze_*` names in a text, without histogram suffixes.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|character: char| !(character.is_ascii_alphanumeric() || character == '_'))
        .filter(|word| word.starts_with("blaze_"))
        .map(|word| {
            word.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count").to_owned()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn the_alert_rules_name_metrics_blaze_documents_and_exports() {
    let rules = std::fs::read_to_string(root().join("docker/prometheus/alerts.yml")).expect("rules");
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let documented = metric_names(&readme);
    let used = metric_names(&rules);
    assert!(used.len() >= 8, "{used:?}");
    for name in &used {
        assert!(documented.contains(name), "{name} is not a documented Blaze metric");
    }
    // The gauges the store alerts read are there from the start.
    let server = common::Server::start(&[], &[]).await;
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = server.metrics().await;
        if metrics.contains("blaze_component_up{component=\"identity_store\"} 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(metrics.contains("blaze_component_up{component=\"identity_store\"} 1"), "{metrics}");
    for name in ["blaze_actor_up", "blaze_http_requests_total"] {
        assert!(metrics.contains(name), "{name} exported");
    }
}
