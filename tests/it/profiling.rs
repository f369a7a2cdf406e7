//! `/admin/profile/*`: a CPU profile of a server under load (pprof
//! protobuf, and a flamegraph SVG rendered by headless Chromium), memory
//! and runtime reports; admins only, one at a time, off when disabled.

use std::path::Path;
use std::time::Duration;

use pprof::protos::Message;

use crate::common::{self, client, expect_error, new_user_client, Server};

/// Keeps the server busy on the request path while a profile is taken.
fn load(server: &Server, seconds: u64) -> tokio::task::JoinHandle<u64> {
    let url = server.url("/v1/models");
    tokio::spawn(async move {
        let caller = client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        let mut answered = 0;
        while tokio::time::Instant::now() < deadline {
            if caller.get(&url).send().await.is_ok_and(|response| response.status() == 200) {
                answered += 1;
            }
        }
        answered
    })
}

#[tokio::test]
async fn a_cpu_profile_names_blazes_own_functions_in_pprof_and_in_a_flamegraph() {
    let server = Server::start(&[], &[]).await;
    let busy = load(&server, 3);
    let response =
        client().get(server.url("/admin/profile/cpu?seconds=2&frequency=499")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    let bytes = response.bytes().await.unwrap();
    let profile = pprof::protos::Profile::decode(bytes.as_ref()).expect("a pprof protobuf");
    assert!(!profile.sample.is_empty(), "samples were taken");
    assert!(busy.await.unwrap() > 10, "the server answered while profiled");
    assert!(
        profile.string_table.iter().any(|name| name.starts_with("blaze::http::")),
        "Blaze's own functions are named: {:?}",
        &profile.string_table[..profile.string_table.len().min(40)]
    );

    let busy = load(&server, 3);
    let response = client().get(server.url("/admin/profile/cpu?seconds=2&format=svg")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    let svg = response.text().await.unwrap();
    busy.await.unwrap();
    assert!(svg.contains("blaze::"), "the flamegraph names Blaze's functions");

    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .expect("Chromium is installed (apt-get install chromium; .ci/run does it)");
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("cpu.svg");
    std::fs::write(&file, &svg).unwrap();
    let output = tokio::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--dump-dom"])
        .arg(format!("file://{}", file.display()))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output).await.unwrap().unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(dom.contains("<svg"), "Chromium read an SVG document: {}", &dom[..dom.len().min(500)]);
    assert!(dom.contains("blaze::"), "and its frames name Blaze's functions");
    assert!(
        !dom.contains("This page contains the following errors"),
        "it parsed: {}",
        &dom[..dom.len().min(800)]
    );
}

#[tokio::test]
async fn one_profile_at_a_time_and_bad_parameters_are_refused_by_name() {
    let server = Server::start(&[], &[]).await;
    let first = tokio::spawn({
        let url = server.url("/admin/profile/cpu?seconds=2");
        async move { client().get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    for path in ["/admin/profile/cpu?seconds=1", "/admin/profile/memory", "/admin/profile/runtime"] {
        let second = client().get(server.url(path)).send().await.unwrap();
        expect_error(second, 409, "profile_in_progress").await;
    }
    assert_eq!(first.await.unwrap(), 200);

    for query in [
        "seconds=0",
        "seconds=61",
        "seconds=-1",
        "seconds=abc",
        "seconds=99999999999999999999999",
        "frequency=0",
        "frequency=5000",
        "format=exe",
        "format=SVG",
        "unknown=1",
    ] {
        let response = client().get(server.url(&format!("/admin/profile/cpu?{query}"))).send().await.unwrap();
        let status = response.status().as_u16();
        let body = common::json_with_status(response, 400).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["error"]["code"], "invalid_query", "{query}: {body}");
    }
    // After all that, the slot is free again; an idle server's flamegraph
    // says it has no samples.
    let response = client().get(server.url("/admin/profile/cpu?seconds=1&format=svg")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let svg = response.text().await.unwrap();
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");
}

#[tokio::test]
async fn profiles_are_for_admins_and_off_when_disabled() {
    let server = Server::start(&[], &[]).await;
    let user = new_user_client(&server, "profiled@example.com").await;
    for path in ["/admin/profile/cpu", "/admin/profile/memory", "/admin/profile/runtime"] {
        let anonymous = common::anonymous_client().get(server.url(path)).send().await.unwrap();
        expect_error(anonymous, 401, "invalid_api_key").await;
        let forbidden = user.get(server.url(path)).send().await.unwrap();
        assert_eq!(forbidden.status(), 403, "{path}");
        let other = client().post(server.url(path)).send().await.unwrap();
        assert_eq!(other.status(), 405, "{path}");
    }
    let encoded = client().get(server.url("/admin/profile/%6demory")).send().await.unwrap();
    assert_eq!(encoded.status(), 200, "an encoded spelling is the same route, for admins");
    let encoded = user.get(server.url("/admin/profile/%6demory")).send().await.unwrap();
    assert_eq!(encoded.status(), 403, "and refused the same way to others");

    let disabled = Server::start(&[("BLAZE__PROFILING__ENABLED", "false")], &[]).await;
    for path in ["/admin/profile/cpu?seconds=1", "/admin/profile/memory", "/admin/profile/runtime"] {
        let response = client().get(disabled.url(path)).send().await.unwrap();
        expect_error(response, 403, "profiling_disabled").await;
    }
    let production = Server::start(&[], &["--profile", "production"]).await;
    let response = client().get(production.url("/admin/profile/memory")).send().await.unwrap();
    expect_error(response, 403, "profiling_disabled").await;
}

#[tokio::test]
async fn memory_and_runtime_reports_describe_the_running_server() {
    let server = Server::start(&[], &[]).await;
    for _ in 0..3 {
        assert_eq!(client().get(server.url("/v1/models")).send().await.unwrap().status(), 200);
    }
    let memory: serde_json::Value = common::json_with_status(
        client().get(server.url("/admin/profile/memory")).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(memory["object"], "profile.memory");
    let resident = memory["process"]["resident_bytes"].as_u64().unwrap();
    assert!(resident > 10 << 20, "{memory}");
    let allocator = &memory["allocator"];
    assert_eq!(allocator["name"], "jemalloc", "{memory}");
    assert!(allocator["allocated_bytes"].as_u64().unwrap() > 1 << 20, "{allocator}");
    assert!(allocator["resident_bytes"].as_u64().unwrap() >= allocator["allocated_bytes"].as_u64().unwrap());
    assert_eq!(allocator["heap_sampling"], false, "off unless asked for: it costs a stack walk per 512 KiB");
    assert_eq!(memory["c_allocator"]["name"], "glibc");
    assert!(memory["c_allocator"]["in_use_bytes"].as_u64().unwrap() > 0);
    let models = memory["models"].as_array().unwrap();
    assert!(models.iter().any(|model| model["bytes"].as_u64().unwrap_or(0) > 1 << 20), "{memory}");

    let explicit = client().get(server.url("/admin/profile/memory?format=json")).send().await.unwrap();
    assert_eq!(common::json_with_status(explicit, 200).await["object"], "profile.memory");
    // Without heap sampling there is no heap profile, and the error says
    // how to get one.
    let unsampled = client().get(server.url("/admin/profile/memory?format=svg")).send().await.unwrap();
    let status = unsampled.status().as_u16();
    let body: serde_json::Value = unsampled.json().await.unwrap();
    assert!(status >= 400, "{body}");
    assert_eq!(body["error"]["code"], "profile_failed", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("profiling.heap_sampling"), "{body}");

    let runtime: serde_json::Value = common::json_with_status(
        client().get(server.url("/admin/profile/runtime")).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(runtime["object"], "profile.runtime");
    let actors = runtime["actors"].as_array().unwrap();
    assert!(actors.iter().any(|actor| actor["name"] == "router" && actor["status"] == "up"), "{runtime}");
    // The health monitor has pinged the router by the time it is ready.
    let router = actors.iter().find(|actor| actor["name"] == "router").unwrap();
    assert!(router["mailbox_round_trip_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{router}");
    // Nothing is stuck: every running actor's mailbox is empty between
    // the health rounds' pings.
    for actor in actors.iter().filter(|actor| actor["status"] == "up") {
        assert!(actor["mailbox_depth"].as_u64().is_some_and(|depth| depth <= 1), "{actor}");
    }
    let threads = runtime["threads"].as_array().unwrap();
    assert!(threads.iter().any(|thread| thread["cpu_seconds"].as_f64().unwrap() > 0.0), "{runtime}");
    let http = &runtime["http"];
    assert!(http["open_connections"].as_i64().unwrap() >= 1, "this request's connection: {http}");
    assert!(http["requests_in_flight"].as_i64().unwrap() >= 1, "{http}");
    let routes = http["routes"].as_array().unwrap();
    let listed = routes.iter().find(|route| route["route"] == "/v1/models").expect("/v1/models counted");
    assert!(listed["requests"].as_u64().unwrap() >= 3);
    assert!(listed["bytes_out"].as_u64().unwrap() > 100, "{listed}");
    let models = runtime["models"].as_array().unwrap();
    assert!(models.iter().all(|model| model["queued_requests"].as_u64().is_some()), "{runtime}");
    assert!(runtime["inference"].is_object());
}

#[tokio::test]
async fn a_heap_profile_names_the_functions_that_hold_memory_in_pprof_and_in_a_flamegraph() {
    let server = Server::start(&[("BLAZE__PROFILING__HEAP_SAMPLING", "true")], &[]).await;
    let memory: serde_json::Value = common::json_with_status(
        client().get(server.url("/admin/profile/memory")).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(memory["allocator"]["heap_sampling"], true, "on from the start when asked for");
    let response = client().get(server.url("/admin/profile/memory?format=pprof")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    assert!(response.headers()["content-disposition"].to_str().unwrap().contains("heap.pb.gz"));
    let gzipped = response.bytes().await.unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gzipped.as_ref()), &mut bytes)
        .expect("a gzipped profile, as go tool pprof reads it");
    let profile = pprof::protos::Profile::decode(bytes.as_slice()).expect("a pprof protobuf");
    assert!(!profile.sample.is_empty(), "the models' weights and the caches were sampled at start-up");
    let in_use: i64 = profile.sample.iter().map(|sample| sample.value.first().copied().unwrap_or(0)).sum();
    assert!(in_use > 1 << 20, "the samples stand for the bytes held: {in_use}");
    assert!(
        profile.string_table.iter().any(|name| name.starts_with("blaze")),
        "Blaze's own functions are named: {:?}",
        &profile.string_table[..profile.string_table.len().min(40)]
    );

    let response = client().get(server.url("/admin/profile/memory?format=svg")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    let svg = response.text().await.unwrap();
    assert!(svg.starts_with("<?xml") && svg.contains("</svg>"), "{}", &svg[..svg.len().min(300)]);
    assert!(svg.contains("blaze"), "the flamegraph names Blaze's functions");

    for query in ["format=exe", "format=JSON", "format=", "formats=svg", "format=svg&seconds=1"] {
        let response =
            client().get(server.url(&format!("/admin/profile/memory?{query}"))).send().await.unwrap();
        let body = common::json_with_status(response, 400).await;
        assert_eq!(body["error"]["code"], "invalid_query", "{query}: {body}");
    }
    let user = new_user_client(&server, "heap@example.com").await;
    let forbidden = user.get(server.url("/admin/profile/memory?format=pprof")).send().await.unwrap();
    assert_eq!(forbidden.status(), 403, "a heap profile is for admins only");
}
