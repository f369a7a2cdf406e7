//! The load suite (`blaze-load`) against a real Blaze: every bundled
//! scenario for a short bounded time, the JSON report against its
//! documented schema, `compare` on an injected regression and on an equal
//! run, the HTML report rendered by headless Chromium, coordinated-omission
//! correction in the open model, and the safety refusals.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{Server, ADMIN_KEY};
use serde_json::Value;

/// One load test at a time: each loads the machine's two cores on its
/// own (and some generate text), so together they would measure each other.
static LOAD_TURN: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The load turn, then the decoding turn: the scenarios generate text, and
/// a test decoding beside them ran past its client's limit in CI (a
/// logprobs stream of 12 tokens took over 30 s). Taken in this order only,
/// so no two tests wait on each other.
async fn load_turn() -> (tokio::sync::SemaphorePermit<'static>, tokio::sync::SemaphorePermit<'static>) {
    let load = LOAD_TURN.acquire().await.expect("the semaphore is never closed");
    (load, crate::common::decoding_turn().await)
}

/// A server whose rate limits no test run reaches (they stay on: their
/// check is part of what is loaded).
async fn server() -> Server {
    Server::start(
        &[
            ("BLAZE__RATE_LIMITS__REQUESTS_PER_MINUTE", "1000000000000"),
            ("BLAZE__RATE_LIMITS__TOKENS_PER_MINUTE", "1000000000000"),
            ("BLAZE__RATE_LIMITS__ANONYMOUS_REQUESTS_PER_MINUTE", "1000000000000"),
            ("BLAZE__SERVER__WORKERS", "2"),
        ],
        &[],
    )
    .await
}

/// Runs `blaze-load` with these arguments (off the async runtime: a run
/// has its own) and returns its exit code.
async fn blaze_load(arguments: Vec<String>) -> i32 {
    let mut all = vec!["blaze-load".to_owned()];
    all.extend(arguments);
    tokio::task::spawn_blocking(move || blaze_load::cli::main_with(all)).await.expect("blaze-load ran")
}

fn strings(arguments: &[&str]) -> Vec<String> {
    arguments.iter().map(|argument| (*argument).to_owned()).collect()
}

/// `blaze-reference` is built beside `blaze` by `cargo test --workspace`.
fn reference_binary() -> PathBuf {
    let binary = Path::new(crate::common::BIN).with_file_name("blaze-reference");
    assert!(binary.exists(), "{} is missing: run the tests with cargo test --workspace", binary.display());
    binary
}

/// Runs a bundled scenario briefly; returns its exit code and JSON report.
async fn run(server: &Server, scenario: &str, extra: &[&str], directory: &Path) -> (i32, Value) {
    let json = directory.join(format!("{scenario}.json"));
    let target = server.url("");
    let mut arguments = strings(&["run", scenario, "--target", &target, "--key", ADMIN_KEY, "--quiet"]);
    arguments.extend(strings(&["--json", json.to_str().expect("utf-8 path")]));
    arguments.extend(strings(&["--reference", reference_binary().to_str().expect("utf-8 path")]));
    arguments.extend(strings(extra));
    let code = blaze_load(arguments).await;
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|error| panic!("{scenario} wrote no report ({error}), exit {code}"));
    (code, serde_json::from_str(&text).expect("the report is JSON"))
}

fn schema_validator() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("load/report.schema.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the schema")).expect("JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

fn assert_matches_schema(validator: &jsonschema::Validator, report: &Value, scenario: &str) {
    let problems: Vec<String> =
        validator.iter_errors(report).map(|error| format!("{} at {}", error, error.instance_path)).collect();
    assert!(problems.is_empty(), "{scenario}: the report breaks its schema: {problems:#?}");
}

fn request<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["requests"]
        .as_array()
        .and_then(|requests| requests.iter().find(|request| request["name"] == name))
        .unwrap_or_else(|| panic!("no request {name} in {report}"))
}

/// Every request of the run answered as expected, and some were measured.
fn assert_clean(report: &Value, scenario: &str) {
    assert!(report["total"]["requests"].as_u64().unwrap_or(0) > 0, "{scenario}: nothing measured: {report}");
    assert_eq!(report["total"]["errors"], 0, "{scenario}: errors {}", report["total"]["errors_by_kind"]);
    assert!(
        report["timeline"].as_array().is_some_and(|timeline| !timeline.is_empty()),
        "{scenario}: no timeline"
    );
    assert!(report["thresholds"]
        .as_array()
        .is_some_and(|thresholds| thresholds.iter().all(|result| result["value"].is_number())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bundled_scenario_runs_against_blaze_with_a_report_matching_its_schema() {
    let _turn = load_turn().await;
    let server = server().await;
    let directory = tempfile::tempdir().expect("a directory");
    let validator = schema_validator();
    let short = ["--duration", "1500ms", "--warmup", "300ms"];
    for scenario in ["baseline", "health", "models", "embeddings", "chat-cached", "auth-flow"] {
        // The cached chat's warm-up generates its 8 answers once.
        let extra: &[&str] =
            if scenario == "chat-cached" { &["--duration", "1500ms", "--warmup", "4s"] } else { &short };
        let (code, report) = run(&server, scenario, extra, directory.path()).await;
        assert_matches_schema(&validator, &report, scenario);
        assert_clean(&report, scenario);
        assert!(code == 0 || code == blaze_load::cli::EXIT_THRESHOLD, "{scenario}: exit {code}");
    }
    let (_, auth) = run(&server, "auth-flow", &short, directory.path()).await;
    for step in ["token", "refresh", "call"] {
        assert!(request(&auth, step)["ok"].as_u64().unwrap_or(0) > 0, "auth-flow {step}: {auth}");
    }
    let (_, baseline) = run(&server, "baseline", &short, directory.path()).await;
    assert_ne!(
        baseline["target"],
        server.url(""),
        "the baseline runs on the reference server, not the target"
    );

    // 1,000 virtual users at once: the suite holds them all.
    let (_, seed) =
        run(&server, "seed-targets", &["--duration", "3s", "--warmup", "2500ms"], directory.path()).await;
    assert_matches_schema(&validator, &seed, "seed-targets");
    assert_clean(&seed, "seed-targets");
    assert!(
        seed["peak_connections"].as_u64().unwrap_or(0) >= 1000,
        "peak connections {}",
        seed["peak_connections"]
    );
    assert_eq!(seed["thresholds"].as_array().map(Vec::len), Some(6));

    for scenario in ["chat-generate", "chat-stream-sse", "ws-stream", "mixed"] {
        // No warm-up: the first answers (started at once) are measured
        // however long a generation takes on a loaded machine.
        let (code, report) =
            run(&server, scenario, &["--duration", "2s", "--warmup", "0s"], directory.path()).await;
        assert_matches_schema(&validator, &report, scenario);
        assert_clean(&report, scenario);
        assert!(code == 0 || code == blaze_load::cli::EXIT_THRESHOLD, "{scenario}: exit {code}");
    }
    for (scenario, name) in [("chat-stream-sse", "chat-stream"), ("ws-stream", "ws-stream")] {
        let report: Value = serde_json::from_str(
            &std::fs::read_to_string(directory.path().join(format!("{scenario}.json"))).expect("report"),
        )
        .expect("JSON");
        let stream = &request(&report, name)["stream"];
        assert!(stream["tokens"].as_u64().unwrap_or(0) > 0, "{scenario}: {stream}");
        assert!(stream["ttft_ms"]["p50"].as_f64().unwrap_or(0.0) > 0.0, "{scenario}: {stream}");
        assert!(stream["tokens_per_s"]["p50"].as_f64().unwrap_or(0.0) > 0.0, "{scenario}: {stream}");
        assert!(stream["ttft_distribution"].as_array().is_some_and(|buckets| !buckets.is_empty()));
    }
}

/// A report with every figure of every request made worse.
fn degraded(report: &Value, rate: f64, latency: f64) -> Value {
    let mut report = report.clone();
    let worsen = |summary: &mut Value| {
        summary["rate_per_s"] = (summary["rate_per_s"].as_f64().expect("rate") * rate).into();
        for percentile in ["p50", "p90", "p99"] {
            let value = summary["latency_ms"][percentile].as_f64().expect("latency");
            summary["latency_ms"][percentile] = (value * latency).into();
        }
    };
    report["requests"].as_array_mut().expect("requests").iter_mut().for_each(worsen);
    worsen(&mut report["total"]);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_fails_on_an_injected_regression_and_passes_an_equal_run() {
    let _turn = load_turn().await;
    let server = server().await;
    let directory = tempfile::tempdir().expect("a directory");
    let (_, report) = run(&server, "health", &["--duration", "1s", "--warmup", "0s"], directory.path()).await;
    let base = directory.path().join("base.json");
    std::fs::write(&base, report.to_string()).expect("written");
    let compare = |new: &Path, limit: &str| {
        strings(&[
            "compare",
            base.to_str().expect("utf-8"),
            new.to_str().expect("utf-8"),
            "--max-regression",
            limit,
        ])
    };
    assert_eq!(blaze_load(compare(&base, "10%")).await, 0, "an equal run is no regression");

    let slower = directory.path().join("slower.json");
    std::fs::write(&slower, degraded(&report, 1.0, 1.25).to_string()).expect("written");
    assert_eq!(blaze_load(compare(&slower, "10%")).await, blaze_load::cli::EXIT_REGRESSION, "latency up 25%");
    assert_eq!(blaze_load(compare(&slower, "30%")).await, 0, "within a 30% allowance");

    let fewer = directory.path().join("fewer.json");
    std::fs::write(&fewer, degraded(&report, 0.8, 1.0).to_string()).expect("written");
    assert_eq!(
        blaze_load(compare(&fewer, "10%")).await,
        blaze_load::cli::EXIT_REGRESSION,
        "throughput down 20%"
    );

    let failing = directory.path().join("failing.json");
    let mut with_errors = report.clone();
    with_errors["total"]["error_ratio"] = 0.05.into();
    std::fs::write(&failing, with_errors.to_string()).expect("written");
    assert_eq!(blaze_load(compare(&failing, "10%")).await, blaze_load::cli::EXIT_REGRESSION, "5% errors");

    let other = directory.path().join("other.json");
    let mut renamed = report.clone();
    renamed["scenario"] = "models".into();
    std::fs::write(&other, renamed.to_string()).expect("written");
    assert_eq!(blaze_load(compare(&other, "10%")).await, blaze_load::cli::EXIT_BAD_INPUT, "another scenario");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_renders_its_plots_in_headless_chromium() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .expect("Chromium is installed (apt-get install chromium; .ci/run does it)");
    let _turn = load_turn().await;
    let server = server().await;
    let directory = tempfile::tempdir().expect("a directory");
    let html = directory.path().join("report.html");
    {
        let (_, report) = run(
            &server,
            "chat-stream-sse",
            &["--duration", "2s", "--warmup", "0s", "--html", html.to_str().expect("utf-8")],
            directory.path(),
        )
        .await;
        assert_clean(&report, "chat-stream-sse");
    }
    let page = std::fs::read_to_string(&html).expect("the HTML report");
    for reference in ["src=", "href=", "url(", "@import"] {
        assert!(!page.contains(reference), "the page loads nothing from elsewhere ({reference})");
    }
    let output = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", html.display()))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("Chromium within 60 s")
        .expect("Chromium ran");
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("data-plots-rendered=\"4\""),
        "Chromium laid out 4 plots with marks: {}",
        &dom[..dom.len().min(2000)]
    );
    for plot in ["latency", "throughput", "errors", "ttft"] {
        assert!(dom.contains(&format!("data-plot=\"{plot}\" data-rendered=\"yes\"")), "plot {plot} rendered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_latency_counts_from_the_schedule_not_the_send() {
    let _turn = load_turn().await;
    let server = server().await;
    let directory = tempfile::tempdir().expect("a directory");
    // One connection, 50 arrivals a second, each answered in 50 ms: the
    // connection can send 20 a second, so arrivals queue. Their latency
    // from the schedule grows; the time from the send stays ~50 ms.
    let scenario = directory.path().join("backlog.yaml");
    std::fs::write(
        &scenario,
        "name: backlog\nduration: 2s\narrival:\n  open: { rate: 50, connections: 1 }\nsteps:\n  - name: slow\n    request: { path: /__test/sleep/50 }\n",
    )
    .expect("written");
    let (code, report) = run(&server, scenario.to_str().expect("utf-8"), &[], directory.path()).await;
    assert_eq!(code, 0);
    let slow = request(&report, "slow");
    let latency = slow["latency_ms"]["p99"].as_f64().expect("p99");
    let service = slow["service_ms"]["p99"].as_f64().expect("p99");
    assert!(service >= 50.0, "each answer takes 50 ms: {service}");
    assert!(
        latency > 4.0 * service,
        "queued arrivals count their wait: latency p99 {latency} ms, service p99 {service} ms"
    );
    assert!(
        report["not_sent"].as_u64().unwrap_or(0) > 0,
        "the backlog at the end is reported: {}",
        report["not_sent"]
    );
}

#[tokio::test]
async fn absurd_settings_and_remote_targets_are_refused_with_a_reason() {
    let code = |arguments: &[&str]| blaze_load(strings(arguments));
    assert_eq!(code(&["run", "health", "--users", "0"]).await, blaze_load::cli::EXIT_BAD_INPUT);
    assert_eq!(code(&["run", "health", "--users", "1000000"]).await, blaze_load::cli::EXIT_BAD_INPUT);
    assert_eq!(code(&["run", "health", "--duration", "5h"]).await, blaze_load::cli::EXIT_BAD_INPUT);
    assert_eq!(code(&["run", "mixed", "--rate", "-1"]).await, blaze_load::cli::EXIT_BAD_INPUT);
    assert_eq!(code(&["run", "health", "--max-requests", "0"]).await, blaze_load::cli::EXIT_BAD_INPUT);
    assert_eq!(
        code(&["run", "health", "--target", "http://192.0.2.1:8080"]).await,
        blaze_load::cli::EXIT_BAD_INPUT
    );
    assert_eq!(
        code(&["run", "health", "--target", "https://127.0.0.1:8443"]).await,
        blaze_load::cli::EXIT_BAD_INPUT
    );
    assert_eq!(code(&["run", "no-such-scenario"]).await, blaze_load::cli::EXIT_BAD_INPUT);

    let directory = tempfile::tempdir().expect("a directory");
    let bad = directory.path().join("bad.yaml");
    std::fs::write(&bad, "name: bad\nduration: 1s\narrival: { closed: { users: 1 } }\nsteps:\n  - name: x\n    request: { path: /health, colour: red }\n")
        .expect("written");
    assert_eq!(code(&["check", bad.to_str().expect("utf-8")]).await, blaze_load::cli::EXIT_BAD_INPUT);
    let names: Vec<&str> = blaze_load::scenario::BUNDLED.iter().map(|(name, _)| *name).collect();
    let mut check = vec!["check"];
    check.extend(names);
    assert_eq!(code(&check).await, 0, "every bundled scenario checks");

    // The messages say what is wrong.
    let refused = blaze_load::scenario::Scenario::parse(
        "name: x\nduration: 2h\narrival: { closed: { users: 0 } }\nsteps:\n  - name: x\n    request: { path: /health, colour: red }\n",
        &blaze_load::scenario::Overrides::default(),
    )
    .expect_err("refused");
    assert!(refused.to_string().contains("colour"), "{refused}");
    let remote = blaze_load::engine::Target::parse("http://192.0.2.1:8080", false).expect_err("refused");
    assert!(remote.to_string().contains("--allow-remote"), "{remote}");
    assert!(blaze_load::engine::Target::parse("http://192.0.2.1:8080", true).is_ok());
}
