//! Lifecycle of the real binary: actor restarts, graceful drain on SIGTERM
//! and SIGINT, configuration layers seen from the running server.

use std::time::{Duration, Instant};

use crate::common::{client, expect_error, Server};
use nix::sys::signal::Signal;

async fn detailed(server: &Server) -> serde_json::Value {
    client().get(server.url("/health/detailed")).send().await.unwrap().json().await.unwrap()
}

async fn restart_is_back_within_a_second(actor: &str, mode: &str) {
    let server = Server::start(&[], &[]).await;
    let client = client();
    let failed = client.post(server.url(&format!("/__test/actors/{actor}/{mode}"))).send().await.unwrap();
    assert_eq!(failed.status(), 200);
    let failed_at = Instant::now();

    let component = format!("actor:{actor}");
    let mut back_after = None;
    let mut health_answers = 0;
    while failed_at.elapsed() < Duration::from_secs(3) {
        let health = client.get(server.url("/health")).send().await.unwrap();
        assert_eq!(health.status(), 200, "HTTP keeps answering while the actor restarts");
        health_answers += 1;
        let report = detailed(&server).await;
        if report["components"][&component]["restarts"] == 1
            && report["components"][&component]["status"] == "up"
        {
            back_after = Some(failed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some(back_after) = back_after else {
        panic!("{actor} not back: {}", detailed(&server).await);
    };
    assert!(back_after < Duration::from_secs(1), "{actor} took {back_after:?}");
    assert!(health_answers >= 1);

    let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("blaze_actor_restarts_total{{actor=\"{actor}\"}} 1")), "{metrics}");
    server
        .wait_event("actor stopped unexpectedly; restarting", |event| {
            event["actor"] == actor && event["stopped_at"].is_string()
        })
        .await;
    server.wait_event("actor started", |event| event["actor"] == actor && event["generation"] == 2).await;
    let starts = server.events("actor started");
    assert!(starts.iter().filter(|event| event["actor"] == actor).count() >= 2, "start logged twice");
    assert!(starts.iter().all(|event| event["started_at"].is_string()));
}

#[tokio::test]
async fn a_panicking_actor_is_restarted_within_a_second() {
    restart_is_back_within_a_second("metrics_aggregator", "panic").await;
}

#[tokio::test]
async fn a_stopping_actor_is_restarted_within_a_second() {
    restart_is_back_within_a_second("health_monitor", "stop").await;
}

async fn drains_on(signal: Signal) {
    let environment = [("BLAZE__SERVER__DRAIN_DELAY_S", "1"), ("BLAZE__SERVER__SHUTDOWN_GRACE_S", "10")];
    let mut server = Server::start(&environment, &[]).await;
    let client = client();
    let slow = tokio::spawn(client.get(server.url("/__test/sleep/2500")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal(signal);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // At once: not ready, while still answering during the drain delay.
    let fresh = reqwest::Client::new();
    let readiness = fresh.get(server.url("/health/ready")).send().await.expect("still accepting");
    let error = expect_error(readiness, 503, "not_ready").await;
    assert!(error["message"].as_str().unwrap().contains("shutting_down"));
    assert_eq!(fresh.get(server.url("/health")).send().await.unwrap().status(), 200, "still alive");

    // After the delay: the listeners are closed.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let refused = tokio::net::TcpStream::connect(&server.address).await;
    assert!(refused.is_err(), "new connections are refused once the delay is over");

    let slow = slow.await.unwrap().expect("the in-flight request completes");
    assert_eq!(slow.status(), 200);
    assert_eq!(slow.json::<serde_json::Value>().await.unwrap()["slept_ms"], 2500);

    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(server.events("draining: readiness reports 503").len(), 1);
    assert_eq!(server.events("listeners closed; finishing in-flight requests").len(), 1);
}

#[tokio::test]
async fn without_a_drain_delay_new_connections_are_refused_at_once() {
    let mut server = Server::start(&[("BLAZE__SERVER__SHUTDOWN_GRACE_S", "10")], &[]).await;
    let slow = tokio::spawn(client().get(server.url("/__test/sleep/1500")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(&server.address).await.is_err());
    assert_eq!(slow.await.unwrap().expect("completes").status(), 200);
    assert_eq!(server.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    drains_on(Signal::SIGTERM).await;
}

#[tokio::test]
async fn sigint_drains_the_same_way() {
    drains_on(Signal::SIGINT).await;
}

#[tokio::test]
async fn requests_past_the_grace_period_are_cut_and_the_process_still_exits_zero() {
    let mut server = Server::start(&[("BLAZE__SERVER__SHUTDOWN_GRACE_S", "1")], &[]).await;
    let slow = tokio::spawn(client().get(server.url("/__test/sleep/20000")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(5), "the grace period bounds the drain");
    assert!(slow.await.unwrap().is_err(), "the request outliving the grace period is cut");
}

#[tokio::test]
async fn profile_file_and_environment_layers_reach_the_running_server() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, b"monitoring:\n  retention_s: 7200\n").unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let server = Server::start(
        &[("BLAZE__MONITORING__COLLECTION_INTERVAL_S", "2")],
        &["--profile", "development", "--config", &path],
    )
    .await;
    let summary: serde_json::Value =
        client().get(server.url("/api/metrics/summary")).send().await.unwrap().json().await.unwrap();
    assert_eq!(summary["collection_interval_s"], 2.0, "environment beats the profile's 5");
    assert_eq!(summary["retention_s"], 7200.0, "the file beats the profile's 3600");
}
