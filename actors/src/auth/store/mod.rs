//! The identity store: one trait, one schema, two backends. PostgreSQL
//! (through a deadpool pool) when `storage.database_url` is set, so that
//! replicas share users and keys; an embedded SQLite file under the data
//! dir otherwise. Both run the same SQL text (`schema.rs`) and pass the
//! same test suite.

pub(crate) mod embedded;
pub(crate) mod postgres;
mod postgres_rows;
pub(crate) mod schema;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use crate::ratelimit::Limits;

pub use self::embedded::EmbeddedStore;
pub use self::postgres::{
    valid_schema_name as postgres_schema_name_is_valid, PostgresOptions, PostgresStore,
};

/// A user's role: admins manage users and every key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    User,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "admin" => Ok(Role::Admin),
            "user" => Ok(Role::User),
            other => Err(StoreError::Corrupt(format!("unknown role `{other}`"))),
        }
    }
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "active" => Ok(UserStatus::Active),
            "disabled" => Ok(UserStatus::Disabled),
            other => Err(StoreError::Corrupt(format!("unknown user status `{other}`"))),
        }
    }
}

/// A user. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    /// Lower case; unique.
    pub email: String,
    pub name: String,
    pub role: Role,
    pub status: UserStatus,
    /// argon2id, PHC string format; `None`: the user signs in by key only.
    pub password_hash: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Budgets for every key of the user that sets none of its own.
    pub limits: Limits,
    /// The team the user belongs to (its usage and quotas roll up there).
    pub team: Option<String>,
}

/// An API key as stored: its hash, never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// HMAC-SHA256(pepper, key), hex.
    pub secret_hash: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    /// Set on rotation (the end of the grace period) or at creation.
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// The key that replaced this one on rotation.
    pub replaced_by: Option<String>,
    /// The key's own budgets, over its user's.
    pub limits: Limits,
    /// The first key of its rotation chain (its own id when never
    /// rotated): a lineage spends one budget and one guard score.
    pub lineage: String,
}

impl KeyRecord {
    /// Whether the key authenticates at `now`.
    pub fn usable_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|end| now < end)
    }

    /// Whether the key counts against its user's limit: usable and not
    /// already replaced (a rotated key in its grace period does not count).
    pub fn active_at(&self, now: i64) -> bool {
        self.usable_at(now) && self.replaced_by.is_none()
    }
}

/// One refresh token of a family (a sign-in and its rotations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    pub jti: String,
    pub family_id: String,
    pub user_id: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// First use: now spent; the caller issues the next one.
    Spent(RefreshRecord),
    /// Already spent: a replay. The family is revoked.
    Replayed(RefreshRecord),
    /// Its family was revoked (logout, replay) or it expired.
    Revoked,
    Unknown,
}

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationKind {
    /// One access token, by `jti`.
    Token,
    /// A sign-in and every token issued from it, by family id (`sid`).
    Family,
    /// Every sign-in of a user (by user id) that began before the
    /// revocation: the user was disabled.
    User,
    /// Every password sign-in of a user (by user id) that began before the
    /// revocation: the password changed.
    Password,
}

impl RevocationKind {
    fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Token => "token",
            RevocationKind::Family => "family",
            RevocationKind::User => "user",
            RevocationKind::Password => "password",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "token" => Ok(RevocationKind::Token),
            "family" => Ok(RevocationKind::Family),
            "user" => Ok(RevocationKind::User),
            "password" => Ok(RevocationKind::Password),
            other => Err(StoreError::Corrupt(format!("unknown revocation kind `{other}`"))),
        }
    }
}

/// A revoked token or family, kept until the tokens it names expire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub kind: RevocationKind,
    pub subject: String,
    pub expires_at: i64,
    pub created_at: i64,
}

/// Fields of a user an admin may change.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub name: Option<String>,
    pub role: Option<Role>,
    pub status: Option<UserStatus>,
    pub password_hash: Option<Option<String>>,
    pub limits: Option<Limits>,
    pub team: Option<Option<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unreachable: {0}")]
    Unavailable(String),
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("the user already has {active} active keys, the most allowed")]
    KeyLimit { active: u64 },
    #[error("the store holds data it cannot read: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The operations both backends provide; each is one transaction.
pub trait Store: Send + Sync + 'static {
    /// The backend's name in health reports and logs.
    fn backend(&self) -> &'static str;
    fn ping(&self) -> BoxFuture<'_, StoreResult<()>>;

    /// Creates the first admin and its key if the store has no user yet;
    /// `false` when a user already exists (another replica got there).
    fn bootstrap(&self, admin: User, key: KeyRecord) -> BoxFuture<'_, StoreResult<bool>>;

    fn create_user(&self, user: User) -> BoxFuture<'_, StoreResult<()>>;
    fn user(&self, id: String) -> BoxFuture<'_, StoreResult<Option<User>>>;
    fn user_by_email(&self, email: String) -> BoxFuture<'_, StoreResult<Option<User>>>;
    /// Users ordered by id, after the cursor.
    fn users(&self, after: Option<String>, limit: u32) -> BoxFuture<'_, StoreResult<Vec<User>>>;
    fn update_user(
        &self,
        id: String,
        changes: UserChanges,
        at: i64,
    ) -> BoxFuture<'_, StoreResult<Option<User>>>;

    /// Stores a new key unless its user already has `max_active` active
    /// keys at `key.created_at` ([`StoreError::KeyLimit`]).
    fn create_key(&self, key: KeyRecord, max_active: u64) -> BoxFuture<'_, StoreResult<()>>;
    fn key(&self, id: String) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>>;
    /// Keys ordered by id, of one user or of all, after the cursor.
    fn keys(
        &self,
        user_id: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> BoxFuture<'_, StoreResult<Vec<KeyRecord>>>;
    /// Revokes a key (idempotent); `None` if there is no such key.
    fn revoke_key(&self, id: String, at: i64) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>>;
    /// Stores `new` and makes the old key expire at `old_expires_at`; `None`
    /// if the old key is unknown or no longer usable.
    fn rotate_key(
        &self,
        old_id: String,
        new: KeyRecord,
        old_expires_at: i64,
    ) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>>;
    /// The user an identity provider's subject (`issuer|subject`) is.
    fn external_user(&self, external_id: String) -> BoxFuture<'_, StoreResult<Option<String>>>;
    /// Links a provider's subject to a user, once ([`StoreError::Conflict`]
    /// if it is linked already).
    fn link_external(&self, external_id: String, user_id: String, at: i64) -> BoxFuture<'_, StoreResult<()>>;
    /// Records when keys were last used, in one batch.
    fn touch_keys(&self, uses: Vec<(String, i64)>) -> BoxFuture<'_, StoreResult<()>>;

    fn insert_refresh(&self, token: RefreshRecord) -> BoxFuture<'_, StoreResult<()>>;
    /// Spends a refresh token once; a second use revokes its family.
    fn use_refresh(&self, jti: String, at: i64) -> BoxFuture<'_, StoreResult<RefreshUse>>;
    fn revoke_family(&self, family_id: String, at: i64) -> BoxFuture<'_, StoreResult<()>>;

    fn add_revocation(&self, revocation: Revocation) -> BoxFuture<'_, StoreResult<()>>;
    /// Revocations still in force at `now`.
    fn revocations(&self, now: i64) -> BoxFuture<'_, StoreResult<Vec<Revocation>>>;
    /// Drops revocations and refresh tokens past their expiry.
    fn prune(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>>;
}

/// Limits as stored: NULL is "the default", and a count fits a BIGINT.
fn limit_columns(limits: &Limits) -> [Option<i64>; 2] {
    let column = |value: Option<u64>| value.map(|value| i64::try_from(value).unwrap_or(i64::MAX));
    [column(limits.requests_per_minute), column(limits.tokens_per_minute)]
}

fn limits_from(requests_per_minute: Option<i64>, tokens_per_minute: Option<i64>) -> Limits {
    Limits {
        requests_per_minute: requests_per_minute.map(|value| value.max(0) as u64),
        tokens_per_minute: tokens_per_minute.map(|value| value.max(0) as u64),
    }
}

fn scopes_text(scopes: &[String]) -> String {
    scopes.join(" ")
}

fn scopes_parse(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

fn apply_changes(user: &mut User, changes: UserChanges, at: i64) {
    if let Some(name) = changes.name {
        user.name = name;
    }
    if let Some(role) = changes.role {
        user.role = role;
    }
    if let Some(status) = changes.status {
        user.status = status;
    }
    if let Some(password_hash) = changes.password_hash {
        user.password_hash = password_hash;
    }
    if let Some(limits) = changes.limits {
        user.limits = limits;
    }
    if let Some(team) = changes.team {
        user.team = team;
    }
    user.updated_at = at;
}

/// What an attempt to spend a refresh token found: `spent` rows changed by
/// the conditional update, and the token as it is now.
fn refresh_outcome(spent: u64, record: Option<RefreshRecord>, at: i64) -> RefreshUse {
    match record {
        None => RefreshUse::Unknown,
        Some(record) if spent == 1 => RefreshUse::Spent(record),
        Some(record) if record.revoked_at.is_some() || record.expires_at <= at => RefreshUse::Revoked,
        Some(record) if record.used_at.is_some() => RefreshUse::Replayed(record),
        Some(_) => RefreshUse::Revoked,
    }
}
