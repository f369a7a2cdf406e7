//! Token sign-ins: an API key or a password exchanged for an access and
//! refresh token pair, refreshes that rotate the refresh token (a replay
//! ends the sign-in), and logout. A sign-in never outlives what it was
//! made with, nor `session_max`.

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use super::{
    millis, token_failure, AdminError, Authenticator, Credential, Failure, FailureSubject, Principal,
    SignInOrigin, MAX_PASSWORD_BYTES,
};
use crate::auth::events::AuthEvent;
use crate::auth::jwt::{Claims, TokenType};
use crate::auth::now_ms;
use crate::auth::secrets;
use crate::auth::store::{
    RefreshRecord, RefreshUse, Revocation, RevocationKind, StoreError, User, UserStatus,
};

/// A new access and refresh token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub refresh_token: String,
    pub refresh_expires_in: u64,
}

/// A sign-in: the family its tokens share, what they may do, what it was
/// made with and when it began (ms).
struct SignIn {
    id: String,
    scopes: Vec<String>,
    origin: SignInOrigin,
    started_at: i64,
}

impl SignIn {
    fn new(scopes: Vec<String>, origin: SignInOrigin) -> Result<Self, Failure> {
        let id = hex::encode(secrets::random_bytes::<16>().ok_or(Failure::StoreUnavailable)?);
        Ok(Self { id, scopes, origin, started_at: now_ms() })
    }
}

impl Authenticator {
    /// The claims of a new token of sign-in `sid`, begun at `signed_in_at`
    /// (ms) with `origin`. No token outlives its sign-in's `session_max`.
    fn claims(&self, user: &User, sign_in: &SignIn, kind: TokenType, now_ms: i64) -> Option<Claims> {
        let ttl = match kind {
            TokenType::Access => self.config.access_ttl,
            TokenType::Refresh => self.config.refresh_ttl,
        };
        let now_s = now_ms / 1000;
        let session_end_s = sign_in.started_at.saturating_add(millis(self.config.session_max)) / 1000;
        let exp =
            now_s.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2)).min(session_end_s);
        Some(Claims {
            sub: user.id.clone(),
            role: user.role,
            scopes: sign_in.scopes.clone(),
            iat: now_s,
            nbf: now_s,
            exp,
            iss: self.config.jwt.issuer.clone(),
            aud: self.config.jwt.audience.clone(),
            jti: hex::encode(secrets::random_bytes::<16>()?),
            typ: kind,
            sid: sign_in.id.clone(),
            src: sign_in.origin.claim(),
            sat: sign_in.started_at,
        })
    }

    /// Signs a new pair for `user` in `sign_in` and records the refresh
    /// token.
    async fn issue(&self, user: &User, sign_in: &SignIn) -> Result<TokenPair, Failure> {
        let now = now_ms();
        let access = self.claims(user, sign_in, TokenType::Access, now).ok_or(Failure::StoreUnavailable)?;
        let refresh = self.claims(user, sign_in, TokenType::Refresh, now).ok_or(Failure::StoreUnavailable)?;
        let record = RefreshRecord {
            jti: refresh.jti.clone(),
            family_id: sign_in.id.clone(),
            user_id: user.id.clone(),
            expires_at: refresh.exp.saturating_mul(1000),
            used_at: None,
            revoked_at: None,
        };
        self.store.insert_refresh(record).await.map_err(|_| Failure::StoreUnavailable)?;
        let sign = |claims: &Claims| {
            self.jwt.sign(claims).map_err(|error| {
                tracing::error!(%error, "cannot sign a token");
                Failure::StoreUnavailable
            })
        };
        let seconds_left = |claims: &Claims| u64::try_from(claims.exp - now / 1000).unwrap_or(0);
        Ok(TokenPair {
            access_token: sign(&access)?,
            token_type: "Bearer",
            expires_in: seconds_left(&access),
            refresh_token: sign(&refresh)?,
            refresh_expires_in: seconds_left(&refresh),
        })
    }

    /// Exchanges an API key for a token pair with the key's scopes; the
    /// sign-in ends when the key is revoked or expires.
    pub async fn token_for_key(&self, key: &str) -> Result<TokenPair, Failure> {
        if !key.starts_with(secrets::KEY_PREFIX) {
            return Err(Failure::Malformed);
        }
        let principal = self.authenticate_key(key, None).await?;
        let Credential::ApiKey { key_id } = &principal.credential else { return Err(Failure::Invalid) };
        let user = self.active_user(&principal.user_id).await?;
        let sign_in = SignIn::new(principal.scopes.clone(), SignInOrigin::Key(key_id.clone()))?;
        self.issue(&user, &sign_in).await
    }

    /// Exchanges an email and password for a token pair; the sign-in ends
    /// when the password changes. An address or account cooling down is
    /// refused before any hash is computed, and the hash waits for the
    /// bounded pool (or is refused when it is full).
    pub async fn token_for_password(
        &self,
        email: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<TokenPair, Failure> {
        let email = email.trim().to_lowercase();
        // Keyed by a digest: a long junk email costs the failure window
        // no more than a real one.
        let account = FailureSubject::Account(self.hasher.hash(&email));
        let subjects: Vec<FailureSubject> =
            client.map(FailureSubject::Address).into_iter().chain([account]).collect();
        if email.len() > 254 {
            self.record_failure(&subjects, Failure::BadPassword);
            return Err(Failure::BadPassword);
        }
        if let Some(left) = self.cooldown_left(&subjects) {
            self.record_failure(&subjects, Failure::CoolingDown(left));
            return Err(Failure::CoolingDown(left));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            self.record_failure(&subjects, Failure::BadPassword);
            return Err(Failure::BadPassword);
        }
        // A place in the hashing pool first: a flood is refused before it
        // costs a store read or a thread.
        let Ok(place) = self.passwords.place() else {
            self.record_failure(&subjects, Failure::Busy);
            return Err(Failure::Busy);
        };
        let user = self.store.user_by_email(email).await.map_err(|_| Failure::StoreUnavailable)?;
        let stored = user.as_ref().and_then(|user| user.password_hash.clone());
        let verified = self.passwords.verify(place, password.to_owned(), stored).await;
        let Some(user) = user.filter(|_| verified) else {
            self.record_failure(&subjects, Failure::BadPassword);
            return Err(Failure::BadPassword);
        };
        if user.status != UserStatus::Active {
            return Err(Failure::Disabled);
        }
        let sign_in = SignIn::new(vec!["*".to_owned()], SignInOrigin::Password)?;
        self.issue(&user, &sign_in).await
    }

    /// Spends a refresh token for a new pair in the same sign-in. A token
    /// spent before is a replay: its whole sign-in is revoked. A sign-in
    /// whose key is revoked or expired, whose password changed, whose user
    /// was disabled, or older than `session_max` is over.
    pub async fn refresh(&self, token: &str) -> Result<TokenPair, Failure> {
        let claims = self.jwt.verify(token, TokenType::Refresh).map_err(token_failure)?;
        let origin = SignInOrigin::parse(&claims.src).ok_or(Failure::Invalid)?;
        let now = now_ms();
        if now >= claims.sat.saturating_add(millis(self.config.session_max)) {
            return Err(Failure::Expired);
        }
        if self.revoked.read().refuses(&claims, &origin) {
            return Err(Failure::Revoked);
        }
        if let SignInOrigin::Key(id) = &origin {
            self.usable_key(id, &claims.sub).await?;
        }
        let outcome =
            self.store.use_refresh(claims.jti.clone(), now).await.map_err(|_| Failure::StoreUnavailable)?;
        match outcome {
            RefreshUse::Spent(record) if record.user_id == claims.sub && record.family_id == claims.sid => {
                let user = self.active_user(&record.user_id).await?;
                let sign_in =
                    SignIn { id: record.family_id, scopes: claims.scopes, origin, started_at: claims.sat };
                self.issue(&user, &sign_in).await
            }
            RefreshUse::Spent(_) | RefreshUse::Unknown => Err(Failure::Invalid),
            RefreshUse::Replayed(record) => {
                tracing::warn!(user = %record.user_id, "a spent refresh token was presented again; its sign-in is revoked");
                metrics::counter!("blaze_auth_refresh_replays_total").increment(1);
                self.revoke_family(&record.family_id).await.map_err(|_| Failure::StoreUnavailable)?;
                Err(Failure::Revoked)
            }
            RefreshUse::Revoked => Err(Failure::Revoked),
        }
    }

    /// Ends the sign-in of an access token: the token, its refresh tokens
    /// and every other access token of the sign-in stop working.
    pub async fn logout(&self, principal: &Principal) -> Result<(), AdminError> {
        let Credential::Token { jti, sid, expires_at, .. } = &principal.credential else {
            return Err(AdminError::Invalid(
                "logout ends a token sign-in; an API key is revoked with DELETE /admin/keys/{id}".to_owned(),
            ));
        };
        let now = now_ms();
        let revocation = Revocation {
            kind: RevocationKind::Token,
            subject: jti.clone(),
            expires_at: expires_at.saturating_mul(1000)
                + millis(Duration::from_secs(self.config.jwt.leeway_s)),
            created_at: now,
        };
        self.store.add_revocation(revocation.clone()).await?;
        self.announce(AuthEvent::Revoked { revocation }).await;
        self.revoke_family(sid).await?;
        Ok(())
    }

    async fn revoke_family(&self, sid: &str) -> Result<(), StoreError> {
        let now = now_ms();
        self.store.revoke_family(sid.to_owned(), now).await?;
        // Access tokens of the sign-in live at most access_ttl (plus the
        // leeway) from now; the revocation lasts as long.
        let lasts = self.config.access_ttl + Duration::from_secs(self.config.jwt.leeway_s);
        let revocation = Revocation {
            kind: RevocationKind::Family,
            subject: sid.to_owned(),
            expires_at: now + millis(lasts),
            created_at: now,
        };
        self.store.add_revocation(revocation.clone()).await?;
        self.announce(AuthEvent::Revoked { revocation }).await;
        Ok(())
    }

    /// Ends every sign-in of `user_id` begun before now (`kind` User), or
    /// every password sign-in (`kind` Password), on every replica: kept
    /// as long as any of their tokens may live.
    pub(super) async fn end_sign_ins(&self, kind: RevocationKind, user_id: &str) -> Result<(), StoreError> {
        let now = now_ms();
        // A sign-in begun just before now lives at most session_max.
        let longest = self.config.session_max;
        let revocation = Revocation {
            kind,
            subject: user_id.to_owned(),
            expires_at: now + millis(longest + Duration::from_secs(self.config.jwt.leeway_s)),
            created_at: now,
        };
        self.store.add_revocation(revocation.clone()).await?;
        self.announce(AuthEvent::Revoked { revocation }).await;
        Ok(())
    }
}
