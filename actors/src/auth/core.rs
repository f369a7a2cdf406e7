//! The authenticator: the state the Auth actor owns and request handlers
//! read directly. Validation runs from bounded caches (a hit costs one
//! HMAC or one signature check, no store round trip, no mailbox hop); a
//! miss reads the store once for every concurrent caller (the cache
//! coalesces them), and when the store cannot answer, authentication
//! fails closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use super::events::{AuthEvent, EventBus};
use super::hashing::{HashingConfig, PasswordHashing};
use super::jwt::{Claims, JwtKeys, JwtSettings, TokenProblem, TokenType};
use super::now_ms;
use super::scopes;
use super::secrets::{self, KeyHasher, NewKey, PresentedKey};
use super::store::{
    KeyRecord, Limits, RefreshRecord, RefreshUse, Revocation, RevocationKind, Role, Store, StoreError, User,
    UserChanges, UserStatus,
};

/// Failures allowed from one client address, account or key id before
/// further failures from it are cooled down.
#[derive(Debug, Clone)]
pub struct BruteForceConfig {
    pub max_failures: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

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

/// Why a request was not authenticated; each is a reason label of
/// `blaze_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed,
    Unknown,
    Revoked,
    Expired,
    /// A token with a bad signature, bad claims or an unknown kid.
    Invalid,
    /// A refresh token presented as an access token, or the reverse.
    WrongType,
    Disabled,
    BadPassword,
    StoreUnavailable,
    /// Too many failures from this address, account or key id: refused
    /// for this long without checking (429).
    CoolingDown(Duration),
    /// Every password hashing thread is busy and the queue is full (429).
    Busy,
    /// A key not in the cache, presented from an address that is cooling
    /// down and has spent its store reads for this second (429).
    NotCached,
}

/// Store reads a cooling address may cause per second (cache misses for
/// key ids): enough for the real clients behind it, too few to load the
/// store with guessed ids.
const COOLING_STORE_READS_PER_SECOND: u32 = 10;

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::Unknown => "unknown",
            Failure::Revoked => "revoked",
            Failure::Expired => "expired",
            Failure::Invalid => "invalid",
            Failure::WrongType => "wrong_type",
            Failure::Disabled => "disabled",
            Failure::BadPassword => "bad_password",
            Failure::StoreUnavailable => "store_unavailable",
            Failure::CoolingDown(_) => "cooling_down",
            Failure::Busy => "busy",
            Failure::NotCached => "not_cached",
        }
    }

    /// A failure that guessing produces (an unknown key, a bad signature,
    /// a wrong password): what cool-downs count. An expired, revoked or
    /// missing credential is no guess, and never cools anyone down.
    pub fn is_guess(self) -> bool {
        matches!(
            self,
            Failure::Malformed
                | Failure::Unknown
                | Failure::Invalid
                | Failure::WrongType
                | Failure::BadPassword
        )
    }
}

/// Bytes of verified access tokens remembered (with their claims).
const VERIFIED_TOKEN_BYTES: u64 = 32 << 20;

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    ApiKey { key_id: String },
    Token { jti: String, sid: String, expires_at: i64, origin: SignInOrigin },
}

/// What a sign-in (a token pair and its refreshes) was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInOrigin {
    Key(String),
    Password,
}

impl SignInOrigin {
    /// The `src` claim's text.
    fn claim(&self) -> String {
        match self {
            SignInOrigin::Key(id) => format!("key:{id}"),
            SignInOrigin::Password => "password".to_owned(),
        }
    }

    fn parse(claim: &str) -> Option<Self> {
        match claim.strip_prefix("key:") {
            Some(id) if !id.is_empty() => Some(SignInOrigin::Key(id.to_owned())),
            Some(_) => None,
            None => (claim == "password").then_some(SignInOrigin::Password),
        }
    }
}

/// Whose failures a cool-down counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FailureSubject {
    Address(IpAddr),
    /// An account, by the peppered digest of its normalized email, for
    /// password sign-ins.
    Account(String),
    /// An API key id that was presented with a wrong secret.
    Key(String),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub role: Role,
    pub scopes: Vec<String>,
    pub credential: Credential,
    /// The budgets set on the key, else on the user; unset ones take the
    /// configured defaults.
    pub limits: Limits,
    /// The rotation chain of the key this caller came with (directly, or
    /// through a sign-in made with it).
    pub lineage: Option<String>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// An admin acting with the admin scope: may manage other users' keys.
    pub fn administers(&self) -> bool {
        self.is_admin() && self.grants("admin")
    }

    /// Whether the caller's scopes allow `scope`.
    pub fn grants(&self, scope: &str) -> bool {
        scopes::grant(&self.scopes, scope)
    }

    /// Whose budgets and guard score the caller spends: the key's lineage
    /// (every key of a rotation chain and every sign-in made with one of
    /// them), else the user.
    pub fn subject(&self) -> String {
        match &self.lineage {
            Some(lineage) => format!("key:{lineage}"),
            None => format!("user:{}", self.user_id),
        }
    }
}

/// A new access and refresh token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub refresh_token: String,
    pub refresh_expires_in: u64,
}

/// Errors of the management operations.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("the user already has {max} active API keys, the most allowed; revoke one first")]
    KeyLimit { max: u64 },
    #[error("{0}")]
    Forbidden(&'static str),
    /// Every password hashing thread is busy: retry shortly.
    #[error("the server is hashing as many passwords as it may; retry shortly")]
    Busy,
    /// The caller's key or token does not hold this scope.
    #[error("this needs the `{0}` scope, which the API key or token does not hold")]
    InsufficientScope(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AdminError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(message) => AdminError::Conflict(message),
            other => AdminError::Store(other),
        }
    }
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

/// Failures of one subject in the current window.
struct FailureWindow {
    started: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
    /// Store reads while cooling: the second they count in, and how many.
    reads: (Instant, u32),
}

/// When a revocation was made and until when it is kept.
#[derive(Debug, Clone, Copy)]
struct Span {
    created_at: i64,
    expires_at: i64,
}

/// Revocations in force, one map per kind, until the tokens they name
/// expire.
#[derive(Default)]
struct Revoked {
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
    fn refuses(&self, claims: &Claims, origin: &SignInOrigin) -> bool {
        let before_sign_in =
            |kind, subject: &str| self.get(kind, subject).is_some_and(|span| span.created_at >= claims.sat);
        self.get(RevocationKind::Token, &claims.jti).is_some()
            || self.get(RevocationKind::Family, &claims.sid).is_some()
            || before_sign_in(RevocationKind::User, &claims.sub)
            || (*origin == SignInOrigin::Password && before_sign_in(RevocationKind::Password, &claims.sub))
    }
}

pub struct Authenticator {
    store: Arc<dyn Store>,
    postgres: Option<deadpool_postgres::Pool>,
    bus: EventBus,
    hasher: KeyHasher,
    jwt: JwtKeys,
    config: AuthConfig,
    keys: Cache<String, Cached<KeyRecord>>,
    users: Cache<String, Cached<User>>,
    /// Access tokens whose signature and claims were checked, by the whole
    /// token text: a token seen again skips the signature and the JSON.
    /// Expiry and revocation are still checked on every use.
    verified: moka::sync::Cache<String, Arc<Claims>>,
    revoked: RwLock<Revoked>,
    last_used: Mutex<HashMap<String, i64>>,
    failures: moka::sync::Cache<FailureSubject, Arc<Mutex<FailureWindow>>>,
    passwords: Arc<PasswordHashing>,
    /// Bumped whenever a key, user or revocation changes here or on another
    /// replica: open WebSockets re-check their caller on it.
    revision: tokio::sync::watch::Sender<u64>,
}

/// A page of a listing: `next_cursor` goes in `after` for the next page.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

pub struct NewUser {
    pub email: String,
    pub name: String,
    pub role: Role,
    pub password: Option<String>,
    pub limits: Limits,
}

/// What an admin changes on a user; `None` keeps a field.
#[derive(Debug, Default)]
pub struct UserUpdate {
    pub name: Option<String>,
    pub role: Option<Role>,
    pub status: Option<UserStatus>,
    pub password: Option<String>,
    pub limits: Option<Limits>,
}

pub struct KeyRequest {
    /// Whose key: `None` for the caller's own.
    pub user_id: Option<String>,
    pub name: String,
    /// `None`: the caller's own scopes.
    pub scopes: Option<Vec<String>>,
    pub expires_in: Option<Duration>,
    /// Budgets of the key itself; only an admin sets them.
    pub limits: Limits,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Longest password accepted, bytes: a longer one is wrong without a hash.
const MAX_PASSWORD_BYTES: usize = 1024;

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
    pub fn new(
        store: Arc<dyn Store>,
        postgres: Option<deadpool_postgres::Pool>,
        bus: EventBus,
        hasher: KeyHasher,
        jwt: JwtKeys,
        config: AuthConfig,
    ) -> Result<Self, String> {
        let passwords = PasswordHashing::start(config.password_hashing)?;
        let lifetimes = || Lifetimes { found: config.cache_ttl, missing: config.negative_cache_ttl };
        let keys = Cache::builder().max_capacity(config.cache_capacity).expire_after(lifetimes()).build();
        let users = Cache::builder().max_capacity(config.cache_capacity).expire_after(lifetimes()).build();
        let verified = moka::sync::Cache::builder()
            .max_capacity(VERIFIED_TOKEN_BYTES)
            .weigher(|token: &String, _: &Arc<Claims>| u32::try_from(token.len() + 256).unwrap_or(u32::MAX))
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
            revoked: RwLock::new(Revoked::default()),
            last_used: Mutex::new(HashMap::new()),
            failures,
            passwords,
            revision: tokio::sync::watch::Sender::new(0),
            config,
        })
    }

    /// A receiver that wakes on every identity change (see `revision`).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revision.subscribe()
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

    // ---- the hot path ----

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

    async fn authenticate_key(&self, text: &str, client: Option<IpAddr>) -> Result<Principal, Failure> {
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
        })
    }

    /// A key of `user` that still authenticates.
    async fn usable_key(&self, id: &str, user: &str) -> Result<Arc<KeyRecord>, Failure> {
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
        cached(&self.keys, id, may_read, async move { store.key(owned).await }).await
    }

    async fn cached_user(&self, id: &str) -> Result<Cached<User>, Failure> {
        let store = self.store.clone();
        let owned = id.to_owned();
        cached(&self.users, id, || true, async move { store.user(owned).await }).await
    }

    async fn active_user(&self, id: &str) -> Result<Arc<User>, Failure> {
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

    // ---- brute force ----

    /// How long the longest cool-down among `subjects` still lasts, if
    /// any. Only failures are ever refused for it: a credential that
    /// validates is accepted whatever others did.
    pub fn cooldown_left(&self, subjects: &[FailureSubject]) -> Option<Duration> {
        let now = Instant::now();
        subjects
            .iter()
            .filter_map(|subject| {
                let window = self.failures.get(subject)?;
                let until = window.lock().blocked_until?;
                until.checked_duration_since(now).filter(|left| !left.is_zero())
            })
            .max()
    }

    /// Whether a credential from `client` may cost a store read now: any
    /// number unless it is cooling down, then at most
    /// `COOLING_STORE_READS_PER_SECOND`.
    fn may_read_store(&self, client: IpAddr) -> bool {
        let Some(window) = self.failures.get(&FailureSubject::Address(client)) else { return true };
        let mut window = window.lock();
        let now = Instant::now();
        if window.blocked_until.is_none_or(|until| until <= now) {
            return true;
        }
        if now.duration_since(window.reads.0) >= Duration::from_secs(1) {
            window.reads = (now, 0);
        }
        window.reads.1 += 1;
        window.reads.1 <= COOLING_STORE_READS_PER_SECOND
    }

    /// Counts a failure: metrics always, and against each subject.
    pub fn record_failure(&self, subjects: &[FailureSubject], failure: Failure) {
        metrics::counter!("blaze_auth_failures_total", "reason" => failure.reason()).increment(1);
        if !failure.is_guess() && !matches!(failure, Failure::CoolingDown(_)) {
            return;
        }
        for subject in subjects {
            self.count_failure(subject);
        }
    }

    fn count_failure(&self, subject: &FailureSubject) {
        let brute = &self.config.brute_force;
        let window = self.failures.get_with_by_ref(subject, || {
            let now = Instant::now();
            Arc::new(Mutex::new(FailureWindow {
                started: now,
                failures: 0,
                blocked_until: None,
                reads: (now, 0),
            }))
        });
        let mut window = window.lock();
        let now = Instant::now();
        if now.duration_since(window.started) > brute.window {
            window.started = now;
            window.failures = 0;
        }
        window.failures = window.failures.saturating_add(1);
        if window.failures >= brute.max_failures && window.blocked_until.is_none_or(|until| until <= now) {
            window.blocked_until = Some(now + brute.cooldown);
            window.started = now;
            window.failures = 0;
            metrics::counter!("blaze_auth_cooldowns_total").increment(1);
            let subject = match subject {
                FailureSubject::Address(address) => format!("address {address}"),
                // Accounts are kept by digest (the email is personal data).
                FailureSubject::Account(digest) => {
                    format!("account {}", digest.get(..12).unwrap_or_default())
                }
                FailureSubject::Key(id) => format!("key {id}"),
            };
            tracing::warn!(
                subject,
                cooldown_s = brute.cooldown.as_secs(),
                "too many authentication failures; failures from it cooled down"
            );
        }
    }

    // ---- tokens ----

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
                tracing::error!(error, "cannot sign a token");
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
    async fn end_sign_ins(&self, kind: RevocationKind, user_id: &str) -> Result<(), StoreError> {
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

    // ---- events and background work (driven by the actor) ----

    /// Applies an event here, then tells the other replicas.
    async fn announce(&self, event: AuthEvent) {
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

    // ---- bootstrap ----

    /// On an empty store, creates the first admin with `configured_key`
    /// (BLAZE__AUTH__BOOTSTRAP_KEY) or a new key. Returns the new key only
    /// when it was generated here, for the caller to show once.
    pub async fn bootstrap(
        &self,
        configured_key: Option<&str>,
        email: &str,
    ) -> Result<Option<NewKey>, String> {
        let (key, generated) = match configured_key {
            Some(text) => {
                let presented = PresentedKey::parse(text).ok_or(
                    "auth.bootstrap_key is not a Blaze key (blz_ then 16 and 64 lower-case hex digits)",
                )?;
                (NewKey { id: presented.id.to_owned(), text: text.to_owned() }, false)
            }
            None => (secrets::generate_key().ok_or("the system has no randomness")?, true),
        };
        let now = now_ms();
        let admin = User {
            id: secrets::random_id().ok_or("the system has no randomness")?,
            email: email.trim().to_lowercase(),
            name: "Administrator".to_owned(),
            role: Role::Admin,
            status: UserStatus::Active,
            password_hash: None,
            created_at: now,
            updated_at: now,
            limits: Limits::default(),
        };
        let record = KeyRecord {
            id: key.id.clone(),
            user_id: admin.id.clone(),
            name: "bootstrap".to_owned(),
            secret_hash: self.hasher.hash(&key.text),
            scopes: vec!["*".to_owned()],
            created_at: now,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            replaced_by: None,
            limits: Limits::default(),
            lineage: key.id.clone(),
        };
        let created = self.store.bootstrap(admin, record).await.map_err(|error| error.to_string())?;
        Ok((created && generated).then_some(key))
    }

    // ---- management ----

    /// A new password's hash, from the bounded pool.
    async fn hash_password(&self, password: String) -> Result<String, AdminError> {
        if password.chars().count() < 12 || password.len() > MAX_PASSWORD_BYTES {
            return Err(AdminError::Invalid("`password` must be 12 to 1024 characters".to_owned()));
        }
        let place = self.passwords.place().map_err(|_busy| AdminError::Busy)?;
        self.passwords.hash(place, password).await.map_err(AdminError::Invalid)
    }

    pub async fn create_user(&self, new: NewUser) -> Result<User, AdminError> {
        let email = new.email.trim().to_lowercase();
        if !valid_email(&email) {
            return Err(AdminError::Invalid("`email` must be an email address".to_owned()));
        }
        let password_hash = match new.password {
            Some(password) => Some(self.hash_password(password).await?),
            None => None,
        };
        let now = now_ms();
        let user = User {
            id: secrets::random_id().ok_or(AdminError::Invalid("no randomness".to_owned()))?,
            email,
            name: new.name,
            role: new.role,
            status: UserStatus::Active,
            password_hash,
            created_at: now,
            updated_at: now,
            limits: new.limits,
        };
        self.store.create_user(user.clone()).await.map_err(|error| match error {
            StoreError::Conflict(_) => {
                AdminError::Conflict(format!("a user with email `{}` exists", user.email))
            }
            other => AdminError::Store(other),
        })?;
        Ok(user)
    }

    pub async fn users(&self, after: Option<String>, limit: u32) -> Result<Page<User>, AdminError> {
        let mut items = self.store.users(after, limit + 1).await?;
        let has_more = items.len() > limit as usize;
        items.truncate(limit as usize);
        Ok(Page { items, has_more })
    }

    pub async fn user(&self, id: &str) -> Result<User, AdminError> {
        self.store.user(id.to_owned()).await?.ok_or(AdminError::NotFound("user"))
    }

    /// Changes a user; a disabled user's keys and tokens stop working on
    /// every replica at once.
    pub async fn update_user(
        &self,
        actor: &Principal,
        id: &str,
        update: UserUpdate,
    ) -> Result<User, AdminError> {
        let UserUpdate { name, role, status, password, limits } = update;
        if actor.user_id == id && (role == Some(Role::User) || status == Some(UserStatus::Disabled)) {
            return Err(AdminError::Forbidden("an admin cannot demote or disable themselves"));
        }
        let password_hash = match password {
            Some(password) => Some(Some(self.hash_password(password).await?)),
            None => None,
        };
        let (password_changed, disabled) = (password_hash.is_some(), status == Some(UserStatus::Disabled));
        // Sign-ins end with what they were made with: a disabled user's
        // every sign-in, a changed password's password sign-ins; neither
        // comes back if the user is enabled again. Ended first: if the
        // change then fails, sessions ended and nothing else is lost.
        if self.store.user(id.to_owned()).await?.is_none() {
            return Err(AdminError::NotFound("user"));
        }
        if disabled {
            self.end_sign_ins(RevocationKind::User, id).await?;
        } else if password_changed {
            self.end_sign_ins(RevocationKind::Password, id).await?;
        }
        let changes = UserChanges { name, role, status, password_hash, limits };
        let user = self
            .store
            .update_user(id.to_owned(), changes, now_ms())
            .await?
            .ok_or(AdminError::NotFound("user"))?;
        self.announce(AuthEvent::UserChanged { id: id.to_owned() }).await;
        Ok(user)
    }

    /// Creates a key for the caller, or (admins only) for another user.
    pub async fn create_key(
        &self,
        actor: &Principal,
        request: KeyRequest,
    ) -> Result<(KeyRecord, NewKey), AdminError> {
        let owner = request.user_id.unwrap_or_else(|| actor.user_id.clone());
        if owner != actor.user_id && !actor.administers() {
            return Err(AdminError::Forbidden(
                "only an admin (with the admin scope) creates keys for other users",
            ));
        }
        if request.limits != Limits::default() && !actor.is_admin() {
            return Err(AdminError::Forbidden("only an admin sets the rate limits of a key"));
        }
        let scopes = request.scopes.unwrap_or_else(|| actor.scopes.clone());
        if let Some(unknown) = scopes.iter().find(|scope| !scopes::SCOPES.contains(&scope.as_str())) {
            return Err(AdminError::Invalid(format!(
                "`scopes`: unknown scope `{unknown}`; the scopes are {}",
                scopes::SCOPES.join(", ")
            )));
        }
        // A key never makes a key that may do more than itself.
        if let Some(beyond) = scopes.iter().find(|scope| !actor.grants(scope)) {
            return Err(AdminError::InsufficientScope(beyond.clone()));
        }
        let user = self.user(&owner).await?;
        if user.status != UserStatus::Active {
            return Err(AdminError::Conflict(format!("user `{owner}` is disabled")));
        }
        let key = secrets::generate_key().ok_or(AdminError::Invalid("no randomness".to_owned()))?;
        let now = now_ms();
        let record = KeyRecord {
            id: key.id.clone(),
            user_id: owner,
            name: request.name,
            secret_hash: self.hasher.hash(&key.text),
            scopes,
            created_at: now,
            expires_at: request.expires_in.map(|lifetime| now + millis(lifetime)),
            revoked_at: None,
            last_used_at: None,
            replaced_by: None,
            limits: request.limits,
            lineage: key.id.clone(),
        };
        let max = self.config.max_keys_per_user;
        self.store.create_key(record.clone(), max).await.map_err(|error| match error {
            StoreError::KeyLimit { .. } => AdminError::KeyLimit { max },
            other => other.into(),
        })?;
        Ok((record, key))
    }

    /// A key the caller may see: any for admins, their own otherwise (the
    /// keys of others are "not found", so their ids leak nothing).
    pub async fn key(&self, actor: &Principal, id: &str) -> Result<KeyRecord, AdminError> {
        let key = self.store.key(id.to_owned()).await?.ok_or(AdminError::NotFound("API key"))?;
        if key.user_id != actor.user_id && !actor.administers() {
            return Err(AdminError::NotFound("API key"));
        }
        Ok(key)
    }

    pub async fn keys(
        &self,
        actor: &Principal,
        user_id: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> Result<Page<KeyRecord>, AdminError> {
        let user_id = match user_id {
            Some(user) if user != actor.user_id && !actor.administers() => {
                return Err(AdminError::Forbidden(
                    "only an admin (with the admin scope) lists the keys of other users",
                ))
            }
            Some(user) => Some(user),
            None if actor.administers() => None,
            None => Some(actor.user_id.clone()),
        };
        let mut items = self.store.keys(user_id, after, limit + 1).await?;
        let has_more = items.len() > limit as usize;
        items.truncate(limit as usize);
        Ok(Page { items, has_more })
    }

    /// Revokes a key; every replica refuses it within the event's delivery.
    pub async fn revoke_key(&self, actor: &Principal, id: &str) -> Result<KeyRecord, AdminError> {
        self.key(actor, id).await?;
        let key =
            self.store.revoke_key(id.to_owned(), now_ms()).await?.ok_or(AdminError::NotFound("API key"))?;
        self.announce(AuthEvent::KeyChanged { id: id.to_owned() }).await;
        Ok(key)
    }

    /// Replaces a key with a new one; the old one works for the rotation
    /// grace period, then stops.
    pub async fn rotate_key(
        &self,
        actor: &Principal,
        id: &str,
    ) -> Result<(KeyRecord, NewKey, KeyRecord), AdminError> {
        let old = self.key(actor, id).await?;
        // The replacement holds the old key's scopes: only a caller who
        // holds them all may make it.
        if let Some(beyond) = old.scopes.iter().find(|scope| !actor.grants(scope)) {
            return Err(AdminError::InsufficientScope(beyond.clone()));
        }
        let key = secrets::generate_key().ok_or(AdminError::Invalid("no randomness".to_owned()))?;
        let now = now_ms();
        let record = KeyRecord {
            id: key.id.clone(),
            secret_hash: self.hasher.hash(&key.text),
            created_at: now,
            expires_at: old.expires_at,
            revoked_at: None,
            last_used_at: None,
            replaced_by: None,
            ..old.clone()
        };
        let grace_end = now + millis(self.config.rotation_grace);
        let retired =
            self.store.rotate_key(id.to_owned(), record.clone(), grace_end).await?.ok_or(
                AdminError::Conflict(format!("API key `{id}` is revoked, expired or already rotated")),
            )?;
        self.announce(AuthEvent::KeyChanged { id: id.to_owned() }).await;
        Ok((record, key, retired))
    }
}

/// A cache hit, or one store read shared by every concurrent caller that
/// missed (if `may_read` allows it: else [`Failure::NotCached`]); a store
/// that cannot answer fails the lookup (closed).
async fn cached<T, F>(
    cache: &Cache<String, Cached<T>>,
    id: &str,
    may_read: impl FnOnce() -> bool,
    load: F,
) -> Result<Cached<T>, Failure>
where
    T: Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Option<T>, StoreError>>,
{
    if let Some(hit) = cache.get(id).await {
        return Ok(hit);
    }
    if !may_read() {
        return Err(Failure::NotCached);
    }
    let found = async move {
        Ok::<_, StoreError>(load.await?.map_or(Cached::Missing, |value| Cached::Found(Arc::new(value))))
    };
    cache.try_get_with(id.to_owned(), found).await.map_err(|_| Failure::StoreUnavailable)
}

fn token_failure(problem: TokenProblem) -> Failure {
    match problem {
        TokenProblem::Expired => Failure::Expired,
        TokenProblem::Invalid => Failure::Invalid,
        TokenProblem::WrongType => Failure::WrongType,
    }
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else { return false };
    !local.is_empty()
        && !domain.is_empty()
        && email.len() <= 254
        && !email.chars().any(|character| character.is_whitespace() || character.is_control())
        && !domain.contains('@')
}
