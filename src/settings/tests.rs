use std::collections::HashMap;
use std::io::Write;

use super::*;

fn sources(
    profile: Option<&str>,
    file: Option<&str>,
    environment: &[(&str, &str)],
) -> (ConfigSources, Option<tempfile::NamedTempFile>) {
    let file = file.map(|text| {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        file
    });
    let sources = ConfigSources {
        profile: profile.map(str::to_owned),
        file: file.as_ref().map(|file| file.path().to_owned()),
        environment: environment
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
    };
    (sources, file)
}

#[test]
fn defaults_match_the_documented_values() {
    let (sources, _file) = sources(None, None, &[]);
    let settings = Settings::load(&sources).expect("defaults are valid");
    assert_eq!(settings.server.max_request_bytes, 50 * 1024 * 1024);
    assert_eq!(settings.server.request_timeout_s, 600);
    assert_eq!(settings.monitoring.collection_interval_s, 30);
    assert_eq!(settings.monitoring.retention_s, 86_400);
    assert_eq!(settings.server.host, "127.0.0.1");
}

#[test]
fn every_profile_loads_and_overrides_the_defaults() {
    for (name, _) in PROFILES {
        let (sources, _file) = sources(Some(name), None, &[]);
        Settings::load(&sources).unwrap_or_else(|errors| panic!("profile {name}: {errors:?}"));
    }
    let (sources, _file) = sources(Some("production"), None, &[]);
    assert_eq!(Settings::load(&sources).expect("valid").server.host, "0.0.0.0");
}

#[test]
fn later_layers_win_file_over_profile_and_environment_over_file() {
    let (sources, _file) = sources(
        Some("development"),
        Some("server:\n  port: 9001\n  workers: 3\n"),
        &[("BLAZE__SERVER__PORT", "9002"), ("BLAZE_PROFILE", "ignored"), ("OTHER", "x")],
    );
    let settings = Settings::load(&sources).expect("valid");
    assert_eq!(settings.server.port, 9002, "environment beats the file");
    assert_eq!(settings.server.workers, 3, "the file beats the profile");
    assert_eq!(settings.server.shutdown_grace_s, 2, "the profile beats the defaults");
}

#[test]
fn every_bad_key_is_reported_with_the_layer_that_set_it() {
    let (sources, file) = sources(
        None,
        Some("server:\n  prot: 80\nmonitoring:\n  retention_s: lots\nbogus: 1\n"),
        &[("BLAZE__SERVER__PORT", "eighty")],
    );
    let path = file.as_ref().expect("file").path().display().to_string();
    let errors = Settings::load(&sources).expect_err("invalid");
    let by_key: HashMap<_, _> = errors.iter().map(|error| (error.key.as_str(), error)).collect();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert_eq!(by_key["server.prot"].origin, path);
    assert!(by_key["server.prot"].problem.contains("unknown key"), "{:?}", by_key["server.prot"]);
    assert_eq!(by_key["bogus"].origin, path);
    assert_eq!(by_key["monitoring.retention_s"].origin, path);
    assert!(
        by_key["monitoring.retention_s"].problem.contains("lots"),
        "{:?}",
        by_key["monitoring.retention_s"]
    );
    assert_eq!(by_key["server.port"].origin, "environment variable BLAZE__SERVER__PORT");
}

#[test]
fn out_of_range_values_name_their_key() {
    let (sources, _file) = sources(None, None, &[("BLAZE__MONITORING__COLLECTION_INTERVAL_S", "0")]);
    let errors = Settings::load(&sources).expect_err("invalid");
    assert_eq!(errors[0].key, "monitoring.collection_interval_s");
    assert_eq!(errors[0].origin, "environment variable BLAZE__MONITORING__COLLECTION_INTERVAL_S");
}

#[test]
fn an_unknown_profile_lists_the_known_ones() {
    let (sources, _file) = sources(Some("staging"), None, &[]);
    let errors = Settings::load(&sources).expect_err("invalid");
    assert!(errors[0].problem.contains("development, production, gpu, minimal"));
}

#[test]
fn the_printed_configuration_parses_back_to_the_same_settings() {
    let (sources, _file) = sources(Some("minimal"), None, &[]);
    let settings = Settings::load(&sources).expect("valid");
    let printed = settings.to_redacted_yaml(&sources);
    assert!(printed.starts_with("# effective configuration, from: config/default.yaml < config/minimal.yaml"));
    let (reparsed_sources, _file) = self::sources(None, Some(&printed), &[]);
    assert_eq!(Settings::load(&reparsed_sources).expect("printed YAML is valid"), settings);
}

/// A catalog with an upstream and a route over it and the local chat model.
const GATEWAY: &str = "models:\n  catalog:\n    remote:\n      kind: upstream\n      base_url: https://api.example.com/v1\n      \
model: gpt-4o-mini\n      api_key_env: REMOTE_KEY\n      tokenizer: smollm2-135m-instruct\n\
gateway:\n  routes:\n    assistant:\n      targets: [{model: smollm2-135m-instruct, weight: 3}, {model: remote}]\n      \
strategy: least_outstanding\n      fallbacks: [remote]\n      semantic_cache: {similarity_threshold: 0.95}\n";

#[test]
fn upstreams_are_read_apart_from_the_local_models_and_print_back() {
    let (sources, _file) = sources(None, Some(GATEWAY), &[]);
    let settings = Settings::load(&sources).expect("valid");
    assert!(!settings.models.catalog.contains_key("remote"), "local models only");
    let remote = &settings.models.upstreams["remote"];
    assert_eq!(remote.upstream_model("remote"), "gpt-4o-mini");
    assert_eq!(remote.first_byte_timeout_ms, 30_000, "the defaults fill what is not set");
    let route = &settings.gateway.routes["assistant"];
    assert_eq!(route.targets[0].weight, 3);
    assert_eq!(route.targets[1].weight, 1);
    assert_eq!(route.strategy, Strategy::LeastOutstanding);
    let semantic = route.semantic_cache.as_ref().expect("a semantic cache");
    assert_eq!(semantic.embedding_model, "all-minilm-l6-v2");
    assert!(!semantic.multi_turn);
    let printed = settings.to_redacted_yaml(&sources);
    assert!(printed.contains("kind: upstream"), "{printed}");
    let (reparsed, _file) = self::sources(None, Some(&printed), &[]);
    assert_eq!(Settings::load(&reparsed).expect("printed YAML is valid"), settings);
}

#[test]
fn bad_upstreams_and_routes_name_what_is_wrong() {
    let cases = [
        ("base_url: https://api.example.com/v1", "base_url: ftp://example.com", "http:// or https://"),
        ("base_url: https://api.example.com/v1", "base_url: https://user:pw@example.com/v1", "credentials"),
        ("api_key_env: REMOTE_KEY", "api_key_env: REMOTE_KEY\n      api_key_file: /run/key", "not both"),
        ("tokenizer: smollm2-135m-instruct", "tokenizer: all-minilm-l6-v2", "not a chat model"),
        ("model: gpt-4o-mini", "model: gpt-4o-mini\n      colour: blue", "unknown key `colour`"),
        ("{model: remote}]", "{model: nowhere}]", "not in models.catalog"),
        ("weight: 3", "weight: 0", "weight must be"),
        ("fallbacks: [remote]", "fallbacks: [assistant]", "fallback `assistant`"),
        ("similarity_threshold: 0.95", "similarity_threshold: 1.5", "similarity_threshold"),
        ("similarity_threshold: 0.95", "embedding_model: smollm2-135m-instruct", "not an embedding model"),
        ("    assistant:\n", "    remote:\n", "must not be a catalog model"),
        ("strategy: least_outstanding", "strategy: fastest", "fastest"),
    ];
    for (from, to, expected) in cases {
        assert!(GATEWAY.contains(from), "{from}");
        let (sources, _file) = sources(None, Some(&GATEWAY.replacen(from, to, 1)), &[]);
        let errors = Settings::load(&sources).expect_err(to);
        assert!(
            errors.iter().any(|error| error.problem.contains(expected)),
            "{to}: expected `{expected}` in {errors:#?}"
        );
    }
}

#[test]
fn traces_are_off_by_default_and_bad_telemetry_settings_name_their_key() {
    let (defaults, _file) = sources(None, None, &[]);
    let settings = Settings::load(&defaults).expect("valid");
    assert!(!settings.telemetry.traces_enabled());
    assert!(settings.profiling.enabled);
    let (production, _file) = sources(Some("production"), None, &[]);
    assert!(!Settings::load(&production).expect("valid").profiling.enabled);

    let check = |text: &str, keys: &[&str]| {
        let (bad, _file) = sources(None, Some(text), &[]);
        let errors = format!("{:?}", Settings::load(&bad).expect_err("invalid"));
        for key in keys {
            assert!(errors.contains(key), "{key} in {errors}");
        }
    };
    check("telemetry:\n  otlp_protocol: carrier-pigeon\n", &["telemetry.otlp_protocol"]);
    check(
        "telemetry:\n  otlp_endpoint: 'ftp://collector'\n  sampling_ratio: 1.5\n  max_queued_spans: 0\n  \
         export_interval_ms: 1\n  service_name: ' '\nprofiling:\n  max_cpu_seconds: 0\n",
        &[
            "telemetry.otlp_endpoint",
            "telemetry.sampling_ratio",
            "telemetry.max_queued_spans",
            "telemetry.export_interval_ms",
            "telemetry.service_name",
            "profiling.max_cpu_seconds",
        ],
    );
}

#[test]
fn log_shipping_is_off_by_default_and_bad_logging_settings_name_their_key() {
    let (defaults, _file) = sources(None, None, &[]);
    let settings = Settings::load(&defaults).expect("valid");
    assert!(!settings.logging.shipping_enabled());
    assert_eq!(settings.logging.elasticsearch_index, "blaze-logs");

    let check = |text: &str, keys: &[&str]| {
        let (bad, _file) = sources(None, Some(text), &[]);
        let errors = format!("{:?}", Settings::load(&bad).expect_err("invalid"));
        for key in keys {
            assert!(errors.contains(key), "{key} in {errors}");
        }
    };
    // Credentials in the URL would show in `blaze config show` and logs.
    check(
        "logging:\n  elasticsearch_url: 'http://elastic:changeme@es:9200'\n",
        &["logging.elasticsearch_url"],
    );
    check("logging:\n  elasticsearch_url: 'file:///etc/passwd'\n", &["logging.elasticsearch_url"]);
    check("logging:\n  elasticsearch_url: 'http://es:9200/?pretty'\n", &["logging.elasticsearch_url"]);
    for index in ["Blaze", "_blaze", "blaze/../x", "a b", "x*", "a,b", "", "blaze:logs"] {
        check(&format!("logging:\n  elasticsearch_index: '{index}'\n"), &["logging.elasticsearch_index"]);
    }
    check(
        "logging:\n  elasticsearch_api_key_file: /k\n  elasticsearch_username: u\n  elasticsearch_password_file: /p\n",
        &["logging.elasticsearch_api_key_file"],
    );
    check("logging:\n  elasticsearch_username: u\n", &["logging.elasticsearch_username"]);
    check(
        "logging:\n  batch_lines: 0\n  batch_bytes: 10\n  flush_interval_ms: 0\n  max_buffered_lines: 0\n  \
         max_retries: 1000\n  timeout_ms: 1\n",
        &[
            "logging.batch_lines",
            "logging.batch_bytes",
            "logging.flush_interval_ms",
            "logging.max_buffered_lines",
            "logging.max_retries",
            "logging.timeout_ms",
        ],
    );
    let (good, _file) = sources(
        None,
        Some(
            "logging:\n  elasticsearch_url: https://es.internal:9200\n  elasticsearch_index: blaze-logs-eu\n",
        ),
        &[],
    );
    assert!(Settings::load(&good).expect("valid").logging.shipping_enabled());
}
