//! The open sockets of this process and each one's place in the counts
//! (authenticated, waiting for their auth message, per caller).

use std::collections::HashMap;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use tokio::sync::watch;

use crate::settings::WebSocketSettings;

/// The open sockets of this process: counts for the limits, and the
/// signal that closes them all at shutdown.
pub struct Sockets {
    pub(super) settings: WebSocketSettings,
    /// How long requests in flight may take to finish at shutdown.
    pub(super) grace: Duration,
    /// Authenticated sockets.
    pub(super) open: AtomicUsize,
    /// Sockets waiting for their auth message.
    pub(super) unauthenticated: AtomicUsize,
    pub(super) per_subject: Mutex<HashMap<String, usize>>,
    pub(super) shutdown: watch::Sender<bool>,
}

impl Sockets {
    pub fn new(settings: WebSocketSettings, grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            settings,
            grace,
            open: AtomicUsize::new(0),
            unauthenticated: AtomicUsize::new(0),
            per_subject: Mutex::new(HashMap::new()),
            shutdown: watch::Sender::new(false),
        })
    }

    /// Every socket stops taking requests, lets those in flight finish
    /// (within the server's grace period) and closes with 1001.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed) + self.unauthenticated.load(Ordering::Relaxed)
    }

    pub(super) fn counter(&self, authenticated: bool) -> (&AtomicUsize, usize) {
        match authenticated {
            true => (&self.open, self.settings.max_connections),
            false => (&self.unauthenticated, self.settings.max_unauthenticated),
        }
    }

    /// A place among the authenticated sockets, or among those waiting
    /// for their auth message; `None` when that kind is full.
    pub(super) fn take_slot(self: &Arc<Self>, authenticated: bool) -> Option<Slot> {
        let (counter, most) = self.counter(authenticated);
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < most).then_some(open + 1))
            .ok()?;
        metrics::gauge!("blaze_ws_connections").increment(1.0);
        Some(Slot { sockets: self.clone(), subject: None, authenticated })
    }
}

/// One open socket's place in the counts, given back when it closes.
pub(super) struct Slot {
    pub(super) sockets: Arc<Sockets>,
    pub(super) subject: Option<String>,
    pub(super) authenticated: bool,
}

impl Slot {
    /// Moves a socket that just authenticated among the authenticated
    /// ones; false when they are all taken.
    pub(super) fn promote(&mut self) -> bool {
        if self.authenticated {
            return true;
        }
        let (counter, most) = self.sockets.counter(true);
        let taken = counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < most).then_some(open + 1));
        if taken.is_err() {
            return false;
        }
        self.sockets.unauthenticated.fetch_sub(1, Ordering::AcqRel);
        self.authenticated = true;
        true
    }

    /// Counts the socket against its caller; false when the caller has
    /// all the sockets it may.
    pub(super) fn bind(&mut self, subject: &str) -> bool {
        let mut per_subject = self.sockets.per_subject.lock();
        let count = per_subject.entry(subject.to_owned()).or_insert(0);
        if *count >= self.sockets.settings.max_connections_per_key {
            if *count == 0 {
                per_subject.remove(subject);
            }
            return false;
        }
        *count += 1;
        self.subject = Some(subject.to_owned());
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.sockets.counter(self.authenticated).0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("blaze_ws_connections").decrement(1.0);
        if let Some(subject) = &self.subject {
            let mut per_subject = self.sockets.per_subject.lock();
            if let Some(count) = per_subject.get_mut(subject) {
                *count -= 1;
                if *count == 0 {
                    per_subject.remove(subject);
                }
            }
        }
    }
}
