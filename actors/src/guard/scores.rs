//! Client scores: each blocked request adds points to its client (API key,
//! or address when anonymous); points halve every half-life; a client
//! whose score crosses the threshold cools down (429 with Retry-After)
//! and starts again from zero. Kept per replica.

use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSettings {
    /// Points a blocked request adds; 0 turns scores off.
    pub block_points: f64,
    pub threshold: f64,
    pub half_life_s: u64,
    pub cool_down_s: u64,
    /// Clients tracked at most; past this a new client is not scored (and
    /// a warning is logged) until the sweep frees room.
    pub max_clients: usize,
}

#[derive(Debug, Clone, Copy)]
struct Score {
    points: f64,
    at: Instant,
    cool_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Scores {
    settings: ArcSwap<ScoreSettings>,
    clients: DashMap<String, Score>,
}

fn decayed(points: f64, since: Duration, half_life_s: u64) -> f64 {
    if half_life_s == 0 {
        return 0.0;
    }
    points * 0.5f64.powf(since.as_secs_f64() / half_life_s as f64)
}

impl Scores {
    pub fn new(settings: ScoreSettings) -> Self {
        Self { settings: ArcSwap::from_pointee(settings), clients: DashMap::new() }
    }

    pub fn configure(&self, settings: ScoreSettings) {
        self.settings.store(std::sync::Arc::new(settings));
    }

    /// Adds a block's points; true when the client starts cooling down.
    pub fn penalize(&self, subject: &str) -> bool {
        let settings = self.settings.load();
        if settings.block_points <= 0.0 {
            return false;
        }
        let now = Instant::now();
        if !self.clients.contains_key(subject) && self.clients.len() >= settings.max_clients {
            metrics::counter!("blaze_guard_untracked_clients_total").increment(1);
            return false;
        }
        let mut entry = self.clients.entry(subject.to_owned()).or_insert(Score {
            points: 0.0,
            at: now,
            cool_until: None,
        });
        let score = entry.value_mut();
        score.points = decayed(score.points, now - score.at, settings.half_life_s) + settings.block_points;
        score.at = now;
        // Blocks close together count whole: the decay of the seconds
        // between them must not keep a client just under the threshold its
        // blocks add up to (1% of a block is about 9 s at a 600 s half-life).
        let tolerance = settings.block_points * 0.01;
        if score.points + tolerance >= settings.threshold && score.cool_until.is_none_or(|until| until <= now)
        {
            score.points = 0.0;
            score.cool_until = Some(now + Duration::from_secs(settings.cool_down_s));
            metrics::counter!("blaze_guard_cool_downs_total").increment(1);
            tracing::warn!(client = subject, cool_down_s = settings.cool_down_s, "guard: client cools down");
            return true;
        }
        false
    }

    /// The rest of the client's cool-down, if any.
    pub fn cooling_down(&self, subject: &str) -> Option<Duration> {
        if self.clients.is_empty() {
            return None;
        }
        let until = self.clients.get(subject)?.cool_until?;
        until.checked_duration_since(Instant::now()).filter(|left| !left.is_zero())
    }

    /// Forgets clients whose score has decayed away and who are not
    /// cooling down.
    pub fn sweep(&self) {
        let settings = self.settings.load();
        let now = Instant::now();
        self.clients.retain(|_, score| {
            score.cool_until.is_some_and(|until| until > now)
                || decayed(score.points, now - score.at, settings.half_life_s) >= 0.01
        });
        metrics::gauge!("blaze_guard_scored_clients").set(self.clients.len() as f64);
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ScoreSettings {
        ScoreSettings {
            block_points: 1.0,
            threshold: 3.0,
            half_life_s: 3600,
            cool_down_s: 60,
            max_clients: 2,
        }
    }

    #[test]
    fn blocks_add_up_to_a_cool_down_then_start_again() {
        let scores = Scores::new(settings());
        assert!(!scores.penalize("key:a"));
        assert!(!scores.penalize("key:a"));
        assert!(scores.cooling_down("key:a").is_none());
        assert!(scores.penalize("key:a"), "the third block crosses 3 points");
        let left = scores.cooling_down("key:a").unwrap();
        assert!(left > Duration::from_secs(55) && left <= Duration::from_secs(60), "{left:?}");
        assert!(scores.cooling_down("key:b").is_none(), "per client");
    }

    #[test]
    fn points_decay_with_the_half_life() {
        assert!((decayed(4.0, Duration::from_secs(60), 60) - 2.0).abs() < 1e-9);
        assert!((decayed(4.0, Duration::from_secs(120), 60) - 1.0).abs() < 1e-9);
        let scores = Scores::new(ScoreSettings { half_life_s: 0, ..settings() });
        for _ in 0..10 {
            assert!(!scores.penalize("key:a"), "points vanish at once: never a cool-down");
        }
    }

    #[test]
    fn clients_are_bounded_and_swept() {
        let scores = Scores::new(settings());
        scores.penalize("a");
        scores.penalize("b");
        scores.penalize("c");
        assert_eq!(scores.len(), 2, "the third client is not tracked");
        scores.configure(ScoreSettings { half_life_s: 0, ..settings() });
        scores.sweep();
        assert!(scores.is_empty(), "decayed scores are forgotten");
    }
}
