//! The authenticator: the state the Auth actor owns and request handlers
//! read directly. Validation runs from bounded caches (a hit costs one
//! HMAC or one signature check, no store round trip, no mailbox hop); a
//! miss reads the store once for every concurrent caller (the cache
//! coalesces them), and when the store cannot answer, authentication
//! fails closed.
//!
//! This file holds the state and the caches; each concern that works on
//! them has its own file, so that the hot path reads apart from the
//! management operations it must never wait on:
//! - `principal.rs`: who a caller is, or why they are not;
//! - `records.rs`: keys and users as the hot path reads them;
//! - `validation.rs`: the hot path, a bearer credential to a principal;
//! - `brute_force.rs`: failure windows and cool-downs;
//! - `tokens.rs`: sign-ins, refreshes and their ends;
//! - `sync.rs`: revocations in force and events between replicas;
//! - `admin.rs`: users and keys, created, changed, revoked.

mod admin;
mod brute_force;
mod external;
mod principal;
mod records;
mod sync;
mod tokens;
mod validation;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;
use parking_lot::{Mutex, RwLock};

use self::brute_force::FailureWindow;
use self::records::Records;
use self::sync::Revoked;
use super::events::EventBus;
use super::hashing::{HashingConfig, HashingStartError, PasswordHashing};
use super::jwt::{Claims, JwtKeys, JwtSettings, TokenProblem};
use super::secrets::KeyHasher;
use super::store::{KeyRecord, Store, User};

pub use self::admin::{AdminError, KeyRequest, NewUser, Page, UserUpdate};
pub use self::brute_force::{BruteForceConfig, FailureSubject};
pub use self::principal::{Credential, Failure, Principal, SignInOrigin};
pub use self::tokens::TokenPair;

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub max_keys_per_user: u64,
    /// How long a rotated key keeps working.
    pub rotation_grace: Duration,
    pub cache_ttl: Duration,
    /// How long an unknown key id is remembered as unknown.
    pub negative_cache_ttl: Duration,
    pub cache_capacity: u64,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// The longest a sign-in lives, across all its refreshes.
    pub session_max: Duration,
    pub jwt: JwtSettings,
    pub brute_force: BruteForceConfig,
    pub password_hashing: HashingConfig,
}

/// Bytes of verified access tokens remembered (with their claims).
const VERIFIED_TOKEN_BYTES: u64 = 32 << 20;

pub struct Authenticator {
    store: Arc<dyn Store>,
    postgres: Option<deadpool_postgres::Pool>,
    bus: EventBus,
    hasher: KeyHasher,
    jwt: JwtKeys,
    config: AuthConfig,
    keys: Records<KeyRecord>,
    users: Records<User>,
    /// Access tokens whose signature and claims were checked, by the whole
    /// token text: a token seen again skips the signature and the JSON.
    /// Expiry and revocation are still checked on every use.
    verified: moka::sync::Cache<String, Arc<Claims>>,
    /// The identity provider whose tokens are accepted, if one is set.
    provider: Option<Arc<super::provider::Provider>>,
    /// Provider subjects (`issuer|subject`) to user ids.
    external: Cache<String, String>,
    /// Provider access tokens whose signature and claims were checked.
    provider_verified: moka::sync::Cache<String, Arc<super::provider::ExternalIdentity>>,
    revoked: RwLock<Revoked>,
    last_used: Mutex<HashMap<String, i64>>,
    failures: moka::sync::Cache<FailureSubject, Arc<Mutex<FailureWindow>>>,
    passwords: Arc<PasswordHashing>,
    /// Bumped whenever a key, user or revocation changes here or on another
    /// replica: open WebSockets re-check their caller on it.
    revision: tokio::sync::watch::Sender<u64>,
}

/// A cached lookup: what the store said, including "no such thing".
#[derive(Clone)]
enum Cached<T> {
    Found(Arc<T>),
    Missing,
}

struct Lifetimes {
    found: Duration,
    missing: Duration,
}

impl<K, T> Expiry<K, Cached<T>> for Lifetimes {
    fn expire_after_create(&self, _: &K, value: &Cached<T>, _: Instant) -> Option<Duration> {
        Some(match value {
            Cached::Found(_) => self.found,
            Cached::Missing => self.missing,
        })
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Longest password accepted, bytes: a longer one is wrong without a hash.
const MAX_PASSWORD_BYTES: usize = 1024;

impl Authenticator {
    pub fn new(
        store: Arc<dyn Store>,
        postgres: Option<deadpool_postgres::Pool>,
        bus: EventBus,
        hasher: KeyHasher,
        jwt: JwtKeys,
        config: AuthConfig,
    ) -> Result<Self, HashingStartError> {
        let passwords = PasswordHashing::start(config.password_hashing)?;
        let lifetimes = || Lifetimes { found: config.cache_ttl, missing: config.negative_cache_ttl };
        let keys = Records::new(config.cache_capacity, lifetimes());
        let users = Records::new(config.cache_capacity, lifetimes());
        let verified = moka::sync::Cache::builder()
            .max_capacity(VERIFIED_TOKEN_BYTES)
            .weigher(|token: &String, _: &Arc<Claims>| u32::try_from(token.len() + 256).unwrap_or(u32::MAX))
            .time_to_live(config.cache_ttl)
            .build();
        let external =
            Cache::builder().max_capacity(config.cache_capacity).time_to_live(config.cache_ttl).build();
        let provider_verified = moka::sync::Cache::builder()
            .max_capacity(VERIFIED_TOKEN_BYTES)
            .weigher(|token: &String, _: &Arc<super::provider::ExternalIdentity>| {
                u32::try_from(token.len() + 512).unwrap_or(u32::MAX)
            })
            .time_to_live(config.cache_ttl)
            .build();
        let brute = &config.brute_force;
        let failures = moka::sync::Cache::builder()
            .max_capacity(config.cache_capacity)
            .time_to_idle(brute.window + brute.cooldown)
            .build();
        Ok(Self {
            store,
            postgres,
            bus,
            hasher,
            jwt,
            keys,
            users,
            verified,
            provider: None,
            external,
            provider_verified,
            revoked: RwLock::new(Revoked::default()),
            last_used: Mutex::new(HashMap::new()),
            failures,
            passwords,
            revision: tokio::sync::watch::Sender::new(0),
            config,
        })
    }

    /// Accepts the access tokens of an identity provider too.
    pub fn with_provider(self, provider: Option<super::provider::Provider>) -> Self {
        Self { provider: provider.map(Arc::new), ..self }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn jwt(&self) -> &JwtKeys {
        &self.jwt
    }
}

fn token_failure(problem: TokenProblem) -> Failure {
    match problem {
        TokenProblem::Expired => Failure::Expired,
        TokenProblem::Invalid => Failure::Invalid,
        TokenProblem::WrongType => Failure::WrongType,
    }
}
