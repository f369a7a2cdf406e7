//! The hot path: a bearer credential (an API key or an access token) to
//! a principal. Every request pays for it, so it reads the caches and the
//! revocations in memory, and reaches the store only on a miss.

use std::net::IpAddr;
use std::sync::Arc;

use super::{token_failure, Authenticator, Cached, Credential, Failure, Principal, SignInOrigin};
use crate::auth::jwt::TokenType;
use crate::auth::now_ms;
use crate::auth::secrets::{self, PresentedKey};
use crate::auth::store::{KeyRecord, User, UserStatus};

impl Authenticator {
    /// Authenticates a bearer credential: an API key or an access token.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Principal, Failure> {
        self.authenticate_from(bearer, None).await
    }

    /// As [`Authenticator::authenticate`], for a credential from `client`:
    /// when an API key is not in the cache and the address is cooling down
    /// and has spent its store reads for this second, the key is
    /// [`Failure::NotCached`] instead of a store read. Only a cache miss
    /// pays for that check.
    pub async fn authenticate_from(
        &self,
        bearer: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Principal, Failure> {
        let bearer = bearer.map(str::trim).filter(|text| !text.is_empty()).ok_or(Failure::Missing)?;
        if bearer.starts_with(secrets::KEY_PREFIX) {
            self.authenticate_key(bearer, client).await
        } else {
            self.authenticate_token(bearer).await
        }
    }

    pub(super) async fn authenticate_key(
        &self,
        text: &str,
        client: Option<IpAddr>,
    ) -> Result<Principal, Failure> {
        let presented = PresentedKey::parse(text).ok_or(Failure::Malformed)?;
        let Cached::Found(key) = self.cached_key(presented.id, client).await? else {
            return Err(Failure::Unknown);
        };
        if !self.hasher.matches(presented, &key.secret_hash) {
            return Err(Failure::Unknown);
        }
        let now = now_ms();
        if key.revoked_at.is_some() {
            return Err(Failure::Revoked);
        }
        if key.expires_at.is_some_and(|end| now >= end) {
            return Err(Failure::Expired);
        }
        let user = self.active_user(&key.user_id).await?;
        self.note_use(&key.id, now);
        Ok(Principal {
            user_id: user.id.clone(),
            role: user.role,
            scopes: key.scopes.clone(),
            credential: Credential::ApiKey { key_id: key.id.clone() },
            limits: key.limits.or(user.limits),
            lineage: Some(key.lineage.clone()),
            team: user.team.clone(),
        })
    }

    async fn authenticate_token(&self, token: &str) -> Result<Principal, Failure> {
        let claims = match self.verified.get(token) {
            Some(claims) => {
                let leeway = i64::try_from(self.config.jwt.leeway_s).unwrap_or(i64::MAX);
                if now_ms() / 1000 > claims.exp.saturating_add(leeway) {
                    self.verified.invalidate(token);
                    return Err(Failure::Expired);
                }
                claims
            }
            None => {
                // Not one of Blaze's own seen before: the provider's, if it
                // names the provider as its issuer.
                if let Some(provider) = self.provider.as_ref().filter(|provider| provider.issued(token)) {
                    return self.authenticate_external(provider, token).await;
                }
                let claims = Arc::new(self.jwt.verify(token, TokenType::Access).map_err(token_failure)?);
                self.verified.insert(token.to_owned(), claims.clone());
                claims
            }
        };
        let origin = SignInOrigin::parse(&claims.src).ok_or(Failure::Invalid)?;
        if self.revoked.read().refuses(&claims, &origin) {
            return Err(Failure::Revoked);
        }
        let user = self.active_user(&claims.sub).await?;
        // A sign-in made with a key lasts as long as the key: a revoked or
        // expired key ends it (the key cache is invalidated on every
        // replica when it changes).
        let (limits, lineage) = match &origin {
            SignInOrigin::Key(id) => {
                let key = self.usable_key(id, &user.id).await?;
                (key.limits.or(user.limits), Some(key.lineage.clone()))
            }
            SignInOrigin::Password => (user.limits, None),
        };
        Ok(Principal {
            user_id: user.id.clone(),
            role: user.role,
            scopes: claims.scopes.clone(),
            credential: Credential::Token {
                jti: claims.jti.clone(),
                sid: claims.sid.clone(),
                expires_at: claims.exp,
                origin,
            },
            limits,
            lineage,
            team: user.team.clone(),
        })
    }

    /// A key of `user` that still authenticates.
    pub(super) async fn usable_key(&self, id: &str, user: &str) -> Result<Arc<KeyRecord>, Failure> {
        let Cached::Found(key) = self.cached_key(id, None).await? else {
            return Err(Failure::Revoked);
        };
        if key.user_id != user {
            return Err(Failure::Invalid);
        }
        if key.revoked_at.is_some() {
            return Err(Failure::Revoked);
        }
        if key.expires_at.is_some_and(|end| now_ms() >= end) {
            return Err(Failure::Expired);
        }
        Ok(key)
    }

    /// A key by id; a miss for a credential from `client` reads the store
    /// only if the address may (see `may_read_store`).
    async fn cached_key(&self, id: &str, client: Option<IpAddr>) -> Result<Cached<KeyRecord>, Failure> {
        let store = self.store.clone();
        let owned = id.to_owned();
        let may_read = || client.is_none_or(|client| self.may_read_store(client));
        self.keys.get(id, may_read, async move { store.key(owned).await }).await
    }

    async fn cached_user(&self, id: &str) -> Result<Cached<User>, Failure> {
        let store = self.store.clone();
        let owned = id.to_owned();
        self.users.get(id, || true, async move { store.user(owned).await }).await
    }

    pub(super) async fn active_user(&self, id: &str) -> Result<Arc<User>, Failure> {
        match self.cached_user(id).await? {
            Cached::Found(user) if user.status == UserStatus::Active => Ok(user),
            Cached::Found(_) => Err(Failure::Disabled),
            Cached::Missing => Err(Failure::Unknown),
        }
    }

    fn note_use(&self, key_id: &str, now: i64) {
        let mut uses = self.last_used.lock();
        match uses.get_mut(key_id) {
            Some(at) => *at = now,
            None => {
                uses.insert(key_id.to_owned(), now);
            }
        }
    }
}
