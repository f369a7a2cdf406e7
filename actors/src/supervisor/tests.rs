use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::{Actor, ActorContext, AsyncContext, Context};

use super::*;

#[test]
fn backoff_doubles_from_initial_and_caps_at_max() {
    let backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(1),
        stable_after: Duration::from_secs(30),
    };
    assert_eq!(backoff.delay(1), Duration::from_millis(50));
    assert_eq!(backoff.delay(2), Duration::from_millis(100));
    assert_eq!(backoff.delay(4), Duration::from_millis(400));
    assert_eq!(backoff.delay(6), Duration::from_secs(1));
    assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(1));
}

/// Fails once, a few milliseconds after its first start: by stopping itself
/// or by panicking, as `panic_instead` says.
struct FailsOnce {
    failed_before: Arc<AtomicBool>,
    panic_instead: bool,
}

impl Actor for FailsOnce {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.failed_before.swap(true, Ordering::SeqCst) {
            return;
        }
        let panic_instead = self.panic_instead;
        ctx.run_later(Duration::from_millis(20), move |_, ctx| {
            if panic_instead {
                panic!("failing on purpose");
            }
            ctx.stop();
        });
    }
}

crate::supervised_actor!(FailsOnce);

fn fails_once(name: &'static str, panic_instead: bool) -> ChildSpec {
    let failed_before = Arc::new(AtomicBool::new(false));
    ChildSpec::new(name, true, move || {
        let actor = FailsOnce { failed_before: failed_before.clone(), panic_instead };
        async move { Ok(actor) }
    })
}

async fn wait_for(board: &ActorBoard, name: &str, accept: impl Fn(&ActorState) -> bool) -> ActorState {
    for _ in 0..300 {
        if let Some(state) = board.get(name).filter(|state| accept(state)) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} never reached the expected state");
}

fn quick_backoff() -> Backoff {
    Backoff { initial: Duration::from_millis(10), ..Backoff::default() }
}

#[actix_rt::test]
async fn restarts_children_that_stop_or_panic_and_counts_them() {
    let board = ActorBoard::default();
    let specs = vec![fails_once("stopper", false), fails_once("panicker", true)];
    let supervisor = Supervisor::new(specs, board.clone(), quick_backoff()).start();
    supervisor.send(StartAll).await.expect("supervisor answers");

    let stopper = wait_for(&board, "stopper", |s| s.status == ActorStatus::Up && s.restarts == 1).await;
    assert_eq!(stopper.last_exit.as_deref(), Some("stopped"));
    let panicker = wait_for(&board, "panicker", |s| s.status == ActorStatus::Up && s.restarts == 1).await;
    assert!(panicker.last_exit.as_deref().unwrap_or_default().contains("failing on purpose"));
    panicker.ping.expect("running instance").send(Ping).await.expect("the new instance answers");

    supervisor.send(StopAll).await.expect("stop all");
    let stopped = wait_for(&board, "stopper", |s| s.status == ActorStatus::Stopped).await;
    assert_eq!(stopped.restarts, 1, "a shutdown is not a restart");
}

#[actix_rt::test]
async fn a_child_that_fails_to_start_is_retried() {
    let board = ActorBoard::default();
    let attempts = Arc::new(AtomicU32::new(0));
    let spec = ChildSpec::new("flaky", true, move || {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst);
        let failed_before = Arc::new(AtomicBool::new(true));
        async move {
            if attempt == 0 {
                Err("first start fails".into())
            } else {
                Ok(FailsOnce { failed_before, panic_instead: false })
            }
        }
    });
    let supervisor = Supervisor::new(vec![spec], board.clone(), quick_backoff()).start();
    supervisor.send(StartAll).await.expect("supervisor answers");
    let state = wait_for(&board, "flaky", |s| s.status == ActorStatus::Up).await;
    assert_eq!(state.restarts, 1);
    assert!(state.last_exit.as_deref().unwrap_or_default().contains("first start fails"));
    supervisor.send(StopAll).await.expect("stop all");
}

/// Runs until told to stop, then stops itself (as a drained worker does).
struct StopsWhenTold(Arc<AtomicBool>);

impl Actor for StopsWhenTold {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_millis(5), |actor, ctx| {
            if actor.0.load(Ordering::SeqCst) {
                ctx.stop();
            }
        });
    }
}

crate::supervised_actor!(StopsWhenTold);

fn stops_when_told(name: &'static str, told: Arc<AtomicBool>, starts: Arc<AtomicU32>) -> ChildSpec {
    ChildSpec::new(name, true, move || {
        starts.fetch_add(1, Ordering::SeqCst);
        let actor = StopsWhenTold(told.clone());
        async move { Ok(actor) }
    })
}

#[actix_rt::test]
async fn a_released_child_leaves_the_tree_when_it_ends_instead_of_restarting() {
    let board = ActorBoard::default();
    let (told, starts) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
    let spec = stops_when_told("drains", told.clone(), starts.clone());
    let supervisor = Supervisor::new(vec![spec], board.clone(), quick_backoff()).start();
    supervisor.send(StartAll).await.unwrap();
    wait_for(&board, "drains", |state| state.status == ActorStatus::Up).await;

    supervisor.send(Release(vec!["drains".to_owned(), "no-such-child".to_owned()])).await.unwrap();
    // Released, it runs on until its instance ends by itself.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(board.get("drains").map(|state| state.status), Some(ActorStatus::Up));
    told.store(true, Ordering::SeqCst);
    for _ in 0..300 {
        if board.get("drains").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(board.get("drains").is_none(), "a released child leaves the board");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(starts.load(Ordering::SeqCst), 1, "and is not restarted");
    supervisor.send(StopAll).await.unwrap();
}

#[actix_rt::test]
async fn a_child_adopted_under_a_released_name_starts_once_the_old_one_ended() {
    let board = ActorBoard::default();
    let (old_told, old_starts) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
    let old = stops_when_told("worker", old_told.clone(), old_starts.clone());
    let supervisor = Supervisor::new(vec![old], board.clone(), quick_backoff()).start();
    supervisor.send(StartAll).await.unwrap();
    wait_for(&board, "worker", |state| state.status == ActorStatus::Up).await;

    supervisor.send(Release(vec!["worker".to_owned()])).await.unwrap();
    let (new_told, new_starts) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
    supervisor.send(Adopt(vec![stops_when_told("worker", new_told, new_starts.clone())])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(new_starts.load(Ordering::SeqCst), 0, "the old instance still runs");
    old_told.store(true, Ordering::SeqCst);
    for _ in 0..300 {
        if new_starts.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(new_starts.load(Ordering::SeqCst), 1, "the new child took the name");
    let state = wait_for(&board, "worker", |state| state.status == ActorStatus::Up).await;
    assert_eq!(state.restarts, 0, "a replacement is no restart");
    assert_eq!(old_starts.load(Ordering::SeqCst), 1);
    supervisor.send(StopAll).await.unwrap();
}
