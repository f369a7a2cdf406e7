//! Keeping this replica current: the revocations in force (reloaded from
//! the store, and added to by events), events applied here and sent to
//! the other replicas, and the batched last-used writes. The Auth actor
//! drives it; request handlers only read what it leaves.

use std::collections::HashMap;

use super::{Authenticator, SignInOrigin};
use crate::auth::events::AuthEvent;
use crate::auth::jwt::Claims;
use crate::auth::now_ms;
use crate::auth::store::{Revocation, RevocationKind, StoreError};

/// When a revocation was made and until when it is kept.
#[derive(Debug, Clone, Copy)]
struct Span {
    created_at: i64,
    expires_at: i64,
}

/// Revocations in force, one map per kind, until the tokens they name
/// expire.
#[derive(Default)]
pub(super) struct Revoked {
    by_kind: [HashMap<String, Span>; 4],
}

impl Revoked {
    fn index(kind: RevocationKind) -> usize {
        match kind {
            RevocationKind::Token => 0,
            RevocationKind::Family => 1,
            RevocationKind::User => 2,
            RevocationKind::Password => 3,
        }
    }

    fn get(&self, kind: RevocationKind, subject: &str) -> Option<Span> {
        self.by_kind[Self::index(kind)].get(subject).copied()
    }

    fn insert(&mut self, revocation: &Revocation) {
        let span = Span { created_at: revocation.created_at, expires_at: revocation.expires_at };
        let map = &mut self.by_kind[Self::index(revocation.kind)];
        // A later revocation of the same subject reaches further back.
        let entry = map.entry(revocation.subject.clone()).or_insert(span);
        entry.created_at = entry.created_at.max(span.created_at);
        entry.expires_at = entry.expires_at.max(span.expires_at);
    }

    /// Whether a token with these claims, of a sign-in made with
    /// `origin`, is revoked: itself, its sign-in, its user's sign-ins
    /// before a disable, or its password sign-ins before a change.
    pub(super) fn refuses(&self, claims: &Claims, origin: &SignInOrigin) -> bool {
        let before_sign_in =
            |kind, subject: &str| self.get(kind, subject).is_some_and(|span| span.created_at >= claims.sat);
        self.get(RevocationKind::Token, &claims.jti).is_some()
            || self.get(RevocationKind::Family, &claims.sid).is_some()
            || before_sign_in(RevocationKind::User, &claims.sub)
            || (*origin == SignInOrigin::Password && before_sign_in(RevocationKind::Password, &claims.sub))
    }
}

impl Authenticator {
    /// A receiver that wakes on every identity change (see `revision`).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Applies an event here, then tells the other replicas.
    pub(super) async fn announce(&self, event: AuthEvent) {
        self.apply(&event).await;
        self.bus.publish(&event, self.postgres.as_ref()).await;
    }

    /// Applies an event from any replica (idempotent).
    pub async fn apply(&self, event: &AuthEvent) {
        match event {
            AuthEvent::KeyChanged { id } => self.keys.invalidate(id).await,
            AuthEvent::UserChanged { id } => self.users.invalidate(id).await,
            AuthEvent::Revoked { revocation } => self.revoked.write().insert(revocation),
        }
        self.revision.send_modify(|revision| *revision = revision.wrapping_add(1));
    }

    /// Reloads the revocations in force, and forgets expired ones.
    pub async fn resync(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let revocations = self.store.revocations(now).await?;
        let mut fresh = Revoked::default();
        for revocation in &revocations {
            fresh.insert(revocation);
        }
        let mut revoked = self.revoked.write();
        // Keep what arrived by event meanwhile and is still in force; of
        // two spans of one subject, the later and longer one holds.
        for (kept, fresh) in revoked.by_kind.iter_mut().zip(fresh.by_kind.iter_mut()) {
            for (subject, span) in kept.drain() {
                if span.expires_at > now {
                    let entry = fresh.entry(subject).or_insert(span);
                    entry.created_at = entry.created_at.max(span.created_at);
                    entry.expires_at = entry.expires_at.max(span.expires_at);
                }
            }
        }
        *revoked = fresh;
        drop(revoked);
        // Open sockets check their callers against what was reloaded.
        self.revision.send_modify(|revision| *revision = revision.wrapping_add(1));
        Ok(())
    }

    /// Forgets every cached key and user (after events may have been missed).
    pub fn clear_caches(&self) {
        self.keys.invalidate_all();
        self.users.invalidate_all();
        self.revision.send_modify(|revision| *revision = revision.wrapping_add(1));
    }

    /// Writes the batched last-used times; on failure they are kept for
    /// the next flush.
    pub async fn flush_last_used(&self) -> Result<usize, StoreError> {
        let uses: Vec<(String, i64)> = self.last_used.lock().drain().collect();
        if uses.is_empty() {
            return Ok(0);
        }
        let count = uses.len();
        if let Err(error) = self.store.touch_keys(uses.clone()).await {
            let mut pending = self.last_used.lock();
            for (id, at) in uses {
                pending.entry(id).or_insert(at);
            }
            return Err(error);
        }
        Ok(count)
    }
}
