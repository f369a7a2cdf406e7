use std::sync::Arc;
use std::time::Duration;

use super::gcra::{self, Pace};
use super::*;
use crate::test_redis::OwnRedis;

const REDIS_URL: &str = "redis://127.0.0.1:6379";

fn options(redis_url: Option<&str>, fail_mode: FailMode) -> RateLimiterOptions {
    RateLimiterOptions {
        redis_url: redis_url.map(str::to_owned),
        redis_timeout: Duration::from_millis(300),
        fail_mode,
        replicas: 4,
        burst_seconds: 60,
    }
}

fn subject(tag: &str) -> String {
    format!("test:{tag}:{}", uuid::Uuid::new_v4().simple())
}

fn requests(subject: &str, per_minute: u64) -> Admission<'_> {
    Admission {
        subject,
        limits: Limits { requests_per_minute: Some(per_minute), tokens_per_minute: None },
        route: None,
        tokens: 0,
    }
}

async fn admitted_of(limiter: &Arc<RateLimiter>, subject: &str, per_minute: u64, attempts: usize) -> usize {
    let checks = (0..attempts).map(|_| {
        let limiter = limiter.clone();
        let subject = subject.to_owned();
        async move { limiter.check(&requests(&subject, per_minute)).await.expect("a verdict").admitted }
    });
    futures_util::future::join_all(checks).await.into_iter().filter(|admitted| *admitted).count()
}

#[test]
fn gcra_admits_the_burst_then_one_unit_per_interval() {
    let pace = Pace::new(60, 60);
    let mut tat = None;
    for n in 0..60 {
        let look = gcra::look(pace, tat, 0.0, 1);
        assert!(look.admitted, "request {n} of the burst");
        tat = Some(look.paid);
    }
    let refused = gcra::look(pace, tat, 0.0, 1);
    assert!(!refused.admitted);
    assert_eq!(refused.retry_after_us.round(), 1_000_000.0, "one unit a second");
    assert!(gcra::look(pace, tat, 1_000_000.0, 1).admitted, "a second later one more fits");
    let standing = gcra::standing(pace, tat.unwrap_or_default(), 0.0);
    assert_eq!((standing.remaining, standing.reset_us), (0, 60_000_000));
    assert!(pace.fits(60) && !pace.fits(61));
    // A refund moves the TAT back; refunding past now empties the bucket.
    assert_eq!(gcra::settle(pace, tat, 0.0, -10), Some(50_000_000.0));
    assert_eq!(gcra::settle(pace, tat, 0.0, -100), None);
}

#[actix_rt::test]
async fn in_process_limit_is_exact_under_concurrency() {
    let limiter = RateLimiter::new(options(None, FailMode::FailOpen)).unwrap();
    let subject = subject("local");
    assert_eq!(admitted_of(&limiter, &subject, 100, 1_000).await, 100);
    let refused = limiter.check(&requests(&subject, 100)).await.unwrap();
    assert!(!refused.admitted);
    let quota = refused.requests.expect("the requests quota");
    assert_eq!((quota.limit, quota.remaining), (100, 0));
    assert!(quota.reset > Duration::from_secs(59) && quota.reset <= Duration::from_secs(60), "{quota:?}");
    assert!(
        refused.retry_after > Duration::from_millis(500) && refused.retry_after <= Duration::from_millis(600)
    );
    // Other subjects have their own budget.
    assert!(limiter.check(&requests("another", 100)).await.unwrap().admitted);
}

#[actix_rt::test]
async fn tokens_are_reserved_at_admission_and_settled() {
    let limiter = RateLimiter::new(options(None, FailMode::FailOpen)).unwrap();
    let subject = subject("tokens");
    let admission = |tokens| Admission {
        subject: &subject,
        limits: Limits { requests_per_minute: None, tokens_per_minute: Some(100) },
        route: None,
        tokens,
    };
    // 50 requests reserving 30 tokens each against 100 a minute: 3 fit.
    let mut tickets = Vec::new();
    for _ in 0..50 {
        let decision = limiter.check(&admission(30)).await.unwrap();
        if decision.admitted {
            tickets.push(decision.ticket.expect("a reservation to settle"));
        }
    }
    assert_eq!(tickets.len(), 3);
    let left = limiter.check(&admission(0)).await.unwrap().tokens.unwrap();
    assert_eq!(left.remaining, 10);
    // Each really used 10: 60 tokens come back.
    for ticket in tickets {
        assert_eq!(ticket.reserved(), 30);
        limiter.settle(ticket, 10).await;
    }
    assert_eq!(limiter.check(&admission(0)).await.unwrap().tokens.unwrap().remaining, 70);
    // More than a bucket holds can never pass: refused at once, nothing paid.
    let huge = limiter.check(&admission(101)).await.unwrap();
    let too_large = huge.too_large.expect("too large");
    assert_eq!((too_large.unit, too_large.cost, too_large.limit), (Unit::Tokens, 101, 100));
    assert!(!huge.admitted);
    assert_eq!(huge.tokens.unwrap().remaining, 70);
}

#[actix_rt::test]
async fn a_route_budget_applies_on_top_of_the_subject_budget() {
    let limiter = RateLimiter::new(options(None, FailMode::FailOpen)).unwrap();
    let subject = subject("route");
    let limited = Limits { requests_per_minute: Some(2), tokens_per_minute: None };
    let on_route = Admission {
        subject: &subject,
        limits: Limits { requests_per_minute: Some(5), tokens_per_minute: None },
        route: Some(("/v1/embeddings", limited)),
        tokens: 0,
    };
    let elsewhere = Admission { route: None, ..on_route.clone() };
    assert!(limiter.check(&on_route).await.unwrap().admitted);
    let second = limiter.check(&on_route).await.unwrap();
    assert!(second.admitted);
    assert_eq!(
        second.requests.unwrap(),
        Quota { limit: 2, remaining: 0, reset: second.requests.unwrap().reset }
    );
    assert!(!limiter.check(&on_route).await.unwrap().admitted, "the route's budget is spent");
    for _ in 0..3 {
        assert!(limiter.check(&elsewhere).await.unwrap().admitted);
    }
    assert!(!limiter.check(&elsewhere).await.unwrap().admitted, "the subject's budget is spent");
}

#[actix_rt::test]
async fn redis_limit_is_exact_across_limiters() {
    let first = RateLimiter::new(options(Some(REDIS_URL), FailMode::FailClosed)).unwrap();
    let second = RateLimiter::new(options(Some(REDIS_URL), FailMode::FailClosed)).unwrap();
    let subject = subject("redis");
    let (a, b) = futures_util::join!(
        admitted_of(&first, &subject, 100, 500),
        admitted_of(&second, &subject, 100, 500)
    );
    assert_eq!(a + b, 100, "Redis at {REDIS_URL} must be up for this test");
    assert!(first.redis_up() && second.redis_up());
    // Tokens through Redis: reserve, settle, and the standing follows.
    let tokens = Admission {
        subject: &subject,
        limits: Limits { requests_per_minute: None, tokens_per_minute: Some(1_000) },
        route: None,
        tokens: 400,
    };
    let decision = first.check(&tokens).await.unwrap();
    assert!(decision.admitted);
    assert_eq!(decision.tokens.unwrap().remaining, 600);
    first.settle(decision.ticket.unwrap(), 100).await;
    let peek = second.check(&Admission { tokens: 0, ..tokens.clone() }).await.unwrap();
    assert_eq!(peek.tokens.unwrap().remaining, 900);
    first.forget(&tokens).await.unwrap();
}

#[actix_rt::test]
async fn redis_down_fails_open_to_a_local_share_or_fails_closed() {
    // Nothing listens on port 1.
    let open = RateLimiter::new(options(Some("redis://127.0.0.1:1"), FailMode::FailOpen)).unwrap();
    let subject = subject("fallback");
    // 100 a minute over 4 replicas: 25 here.
    assert_eq!(admitted_of(&open, &subject, 100, 60).await, 25);
    assert!(!open.redis_up());
    let closed = RateLimiter::new(options(Some("redis://127.0.0.1:1"), FailMode::FailClosed)).unwrap();
    assert!(matches!(closed.check(&requests(&subject, 100)).await, Err(Unavailable)));
    assert!(matches!(closed.check(&requests(&subject, 100)).await, Err(Unavailable)), "still down");
    closed.probe().await;
    assert!(!closed.redis_up(), "nothing answers the probe");
}

#[actix_rt::test]
async fn recovers_when_redis_comes_back() {
    let mut redis = OwnRedis::on_free_port();
    let url = redis.url();
    let limiter = RateLimiter::new(options(Some(&url), FailMode::FailOpen)).unwrap();
    let subject = subject("recover");
    let mut up = false;
    for _ in 0..50 {
        if limiter.check(&requests(&subject, 1_000)).await.is_ok() && limiter.redis_up() {
            up = true;
            break;
        }
        limiter.probe().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the test's redis-server started");
    redis.kill();
    let _ = limiter.check(&requests(&subject, 1_000)).await.unwrap();
    assert!(!limiter.redis_up(), "a failed call marks Redis down");
    assert!(limiter.check(&requests(&subject, 1_000)).await.unwrap().admitted, "fails open");
    let _restarted = OwnRedis::start(redis.port);
    let mut back = false;
    for _ in 0..100 {
        limiter.probe().await;
        if limiter.redis_up() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the probe notices Redis is back");
    let decision = limiter.check(&requests(&subject, 1_000)).await.unwrap();
    assert!(decision.admitted && limiter.redis_up());
}
