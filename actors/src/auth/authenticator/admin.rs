//! The management operations: the first admin, users, and API keys
//! created, listed, rotated and revoked. Each checks what the acting
//! principal may do, and a change that ends access is announced to every
//! replica before it returns.

use std::time::Duration;

use super::{millis, Authenticator, Principal, MAX_PASSWORD_BYTES};
use crate::auth::events::AuthEvent;
use crate::auth::now_ms;
use crate::auth::scopes;
use crate::auth::secrets::{self, NewKey, PresentedKey, SecretError};
use crate::auth::store::{
    KeyRecord, Limits, RevocationKind, Role, StoreError, User, UserChanges, UserStatus,
};

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
    /// The server cannot make a secret (no randomness, a hashing failure).
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl From<StoreError> for AdminError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(message) => AdminError::Conflict(message),
            other => AdminError::Store(other),
        }
    }
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
    pub team: Option<String>,
}

/// What an admin changes on a user; `None` keeps a field.
#[derive(Debug, Default)]
pub struct UserUpdate {
    pub name: Option<String>,
    pub role: Option<Role>,
    pub status: Option<UserStatus>,
    pub password: Option<String>,
    pub limits: Option<Limits>,
    /// `Some(None)` takes the user out of their team.
    pub team: Option<Option<String>>,
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

impl Authenticator {
    /// On an empty store, creates the first admin with `configured_key`
    /// (BLAZE__AUTH__BOOTSTRAP_KEY) or a new key. Returns the new key only
    /// when it was generated here, for the caller to show once.
    pub async fn bootstrap(
        &self,
        configured_key: Option<&str>,
        email: &str,
    ) -> Result<Option<NewKey>, AdminError> {
        let (key, generated) = match configured_key {
            Some(text) => {
                let presented = PresentedKey::parse(text).ok_or_else(|| {
                    AdminError::Invalid(
                        "auth.bootstrap_key is not a Blaze key (blz_ then 16 and 64 lower-case hex digits)"
                            .to_owned(),
                    )
                })?;
                (NewKey { id: presented.id.to_owned(), text: text.to_owned() }, false)
            }
            None => (secrets::generate_key().ok_or(SecretError::NoRandomness)?, true),
        };
        let now = now_ms();
        let admin = User {
            id: secrets::random_id().ok_or(SecretError::NoRandomness)?,
            email: email.trim().to_lowercase(),
            name: "Administrator".to_owned(),
            role: Role::Admin,
            status: UserStatus::Active,
            password_hash: None,
            created_at: now,
            updated_at: now,
            limits: Limits::default(),
            team: None,
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
        let created = self.store.bootstrap(admin, record).await?;
        Ok((created && generated).then_some(key))
    }

    /// A new password's hash, from the bounded pool.
    async fn hash_password(&self, password: String) -> Result<String, AdminError> {
        if password.chars().count() < 12 || password.len() > MAX_PASSWORD_BYTES {
            return Err(AdminError::Invalid("`password` must be 12 to 1024 characters".to_owned()));
        }
        let place = self.passwords.place().map_err(|_busy| AdminError::Busy)?;
        Ok(self.passwords.hash(place, password).await?)
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
            id: secrets::random_id().ok_or(SecretError::NoRandomness)?,
            email,
            name: new.name,
            role: new.role,
            status: UserStatus::Active,
            password_hash,
            created_at: now,
            updated_at: now,
            limits: new.limits,
            team: new.team,
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
        let UserUpdate { name, role, status, password, limits, team } = update;
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
        let changes = UserChanges { name, role, status, password_hash, limits, team };
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
        let scopes = new_key_scopes(actor, request.scopes)?;
        let user = self.user(&owner).await?;
        if user.status != UserStatus::Active {
            return Err(AdminError::Conflict(format!("user `{owner}` is disabled")));
        }
        let key = secrets::generate_key().ok_or(SecretError::NoRandomness)?;
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
        let key = secrets::generate_key().ok_or(SecretError::NoRandomness)?;
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

/// The scopes of a new key: those asked for, else the caller's own; each
/// one a scope there is, and one the caller holds.
fn new_key_scopes(actor: &Principal, requested: Option<Vec<String>>) -> Result<Vec<String>, AdminError> {
    let scopes = requested.unwrap_or_else(|| actor.scopes.clone());
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
    Ok(scopes)
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else { return false };
    !local.is_empty()
        && !domain.is_empty()
        && email.len() <= 254
        && !email.chars().any(|character| character.is_whitespace() || character.is_control())
        && !domain.contains('@')
}
