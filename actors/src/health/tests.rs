use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::BoxFuture;

use super::*;
use crate::supervisor::ActorBoard;
use crate::BuildInfo;

fn build() -> BuildInfo {
    BuildInfo { version: "test", git_sha: "test", rustc: "test", profile: "test" }
}

/// A component whose health the test switches.
struct Switch {
    up: Arc<AtomicBool>,
    required: bool,
}

impl Probe for Switch {
    fn component(&self) -> &str {
        "switch"
    }

    fn required(&self) -> bool {
        self.required
    }

    fn check(&self) -> BoxFuture<'static, Result<(), ProbeError>> {
        let up = self.up.load(Ordering::SeqCst);
        Box::pin(async move {
            if up {
                Ok(())
            } else {
                Err(ProbeError::Down("switched off".to_owned()))
            }
        })
    }
}

fn monitor(state: Arc<HealthState>, probe: Switch) -> Addr<HealthMonitor> {
    let config = HealthMonitorConfig {
        probe_interval: Duration::from_secs(3600),
        probe_timeout: Duration::from_millis(200),
    };
    HealthMonitor::new(config, state, ActorBoard::default(), vec![Arc::new(probe)]).start()
}

#[actix_rt::test]
async fn a_failing_required_probe_makes_the_service_unready() {
    let state = HealthState::new(build());
    let up = Arc::new(AtomicBool::new(true));
    let monitor = monitor(state.clone(), Switch { up: up.clone(), required: true });

    monitor.send(ProbeNow).await.expect("probe round");
    assert_eq!(state.readiness(), Readiness { ready: true, failing: vec![] });

    up.store(false, Ordering::SeqCst);
    monitor.send(ProbeNow).await.expect("probe round");
    assert_eq!(state.readiness().failing, vec!["switch".to_owned()]);
    let detailed = state.detailed();
    assert_eq!(detailed.status, "unavailable");
    let switch = &detailed.components["switch"];
    assert_eq!(switch.status, ComponentStatus::Down);
    assert_eq!(switch.last_error.as_deref(), Some("switched off"));
    assert!(switch.last_probe_latency_ms.is_some());
}

#[actix_rt::test]
async fn an_optional_probe_degrades_but_keeps_the_service_ready() {
    let state = HealthState::new(build());
    let monitor = monitor(state.clone(), Switch { up: Arc::default(), required: false });
    monitor.send(ProbeNow).await.expect("probe round");
    assert!(state.readiness().ready);
    assert_eq!(state.detailed().status, "degraded");
}

#[test]
fn draining_makes_the_service_unready_at_once() {
    let state = HealthState::new(build());
    assert!(state.readiness().ready);
    state.begin_draining();
    let readiness = state.readiness();
    assert!(!readiness.ready);
    assert_eq!(readiness.failing, vec!["shutting_down".to_owned()]);
}
