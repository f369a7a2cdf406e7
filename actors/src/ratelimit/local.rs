//! The in-process backend: every subject's buckets under one map entry,
//! so a check of several buckets (requests, tokens, a route's) is atomic
//! without a global lock. Buckets that are full again are swept by the
//! actor; a full bucket and a missing one mean the same thing.

use std::time::Instant;

use dashmap::DashMap;

use super::core::{Bucket, Verdict};
use super::gcra;

pub struct LocalBuckets {
    subjects: DashMap<String, Vec<(String, f64)>>,
    origin: Instant,
}

impl Default for LocalBuckets {
    fn default() -> Self {
        Self { subjects: DashMap::new(), origin: Instant::now() }
    }
}

impl LocalBuckets {
    fn now(&self) -> f64 {
        self.origin.elapsed().as_micros() as f64
    }

    /// Checks every bucket of `subject` at once; pays all or none.
    pub fn check(&self, subject: &str, buckets: &[Bucket]) -> Verdict {
        let now = self.now();
        // A subject seen lately is found without making its key.
        let mut entry = match self.subjects.get_mut(subject) {
            Some(entry) => entry,
            None => self.subjects.entry(subject.to_owned()).or_default(),
        };
        let tat_of = |entry: &Vec<(String, f64)>, name: &str| {
            entry.iter().find(|(bucket, _)| bucket == name).map(|(_, tat)| *tat)
        };
        let looks: Vec<_> = buckets
            .iter()
            .map(|bucket| gcra::look(bucket.pace, tat_of(&entry, &bucket.name), now, bucket.cost))
            .collect();
        let admitted = looks.iter().all(|look| look.admitted);
        let retry_after_us = looks.iter().map(|look| look.retry_after_us).fold(0.0, f64::max);
        let mut standings = Vec::with_capacity(buckets.len());
        for (bucket, look) in buckets.iter().zip(&looks) {
            let before = tat_of(&entry, &bucket.name).unwrap_or(now).max(now);
            let level = if admitted { look.paid } else { before };
            if admitted && level > before {
                match entry.iter_mut().find(|(name, _)| *name == bucket.name) {
                    Some((_, tat)) => *tat = level,
                    None => entry.push((bucket.name.to_string(), level)),
                }
            }
            standings.push(gcra::standing(bucket.pace, level, now));
        }
        Verdict { admitted, retry_after_us: retry_after_us.ceil() as u64, standings }
    }

    /// Corrects the paid buckets by `delta` units (negative: a refund).
    pub fn settle(&self, subject: &str, buckets: &[Bucket], delta: i64) {
        let now = self.now();
        // A refund to a bucket already full again has nothing to move.
        let mut entry = if delta > 0 {
            self.subjects.entry(subject.to_owned()).or_default()
        } else {
            match self.subjects.get_mut(subject) {
                Some(entry) => entry,
                None => return,
            }
        };
        for bucket in buckets {
            let position = entry.iter().position(|(name, _)| *name == bucket.name);
            let tat = position.map(|index| entry[index].1);
            match (gcra::settle(bucket.pace, tat, now, delta), position) {
                (Some(moved), Some(index)) => entry[index].1 = moved,
                (Some(moved), None) => entry.push((bucket.name.to_string(), moved)),
                (None, Some(index)) => {
                    entry.swap_remove(index);
                }
                (None, None) => {}
            }
        }
    }

    /// Drops every bucket that is full again; returns how many subjects
    /// are still tracked.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        self.subjects.retain(|_, buckets| {
            buckets.retain(|(_, tat)| *tat > now);
            !buckets.is_empty()
        });
        self.subjects.len()
    }

    pub fn clear(&self) {
        self.subjects.clear();
    }
}
