//! Identity: users, API keys, JWTs, and the Auth actor that owns them.
//!
//! - `store/`: one trait, one schema, two backends (embedded SQLite by
//!   default, PostgreSQL when shared);
//! - `secrets.rs`: the key format, the peppered hash, passwords;
//! - `hashing.rs`: the bounded pool that hashes passwords off the request
//!   path;
//! - `scopes.rs`: the scope vocabulary of keys and tokens;
//! - `jwt.rs`: signing and verification keys, claims, validation;
//! - `authenticator/`: the [`Authenticator`] request handlers read
//!   directly (caches, revocations, brute-force windows), token sign-ins,
//!   and the management operations, one file per concern;
//! - `events.rs`: revocations and changes sent between replicas;
//! - `actor.rs`: the Auth actor: batched last-used writes, revocation sync,
//!   the subscription to other replicas' events.

mod actor;
mod authenticator;
pub mod events;
pub mod hashing;
pub mod jwt;
pub mod provider;
pub mod scopes;
pub mod secrets;
pub mod store;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hmac::Mac;

use crate::health::ProbeError;

pub use self::actor::{AuthActor, AuthActorConfig, EventSource};
pub use self::authenticator::{
    AdminError, AuthConfig, Authenticator, BruteForceConfig, Credential, Failure, FailureSubject, KeyRequest,
    NewUser, Page, Principal, SignInOrigin, TokenPair, UserUpdate,
};
pub use self::hashing::HashingConfig;
pub use self::hashing::HashingStartError;
pub use self::jwt::JwtKeyError;
pub use self::jwt::{JwtAlgorithm, JwtKeySpec, JwtSettings};
pub use self::secrets::SecretError;
pub use self::store::{
    EmbeddedStore, KeyRecord, PostgresOptions, PostgresStore, Role, Store, StoreError, StoreResult, User,
    UserStatus,
};

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}

/// Where identity lives and how it is shared.
pub struct IdentityOptions {
    pub data_dir: PathBuf,
    pub postgres: Option<PostgresOptions>,
    pub redis_url: Option<String>,
    /// The pepper from config; generated into the data dir when absent
    /// (embedded only: replicas sharing a database must share it).
    pub pepper: Option<String>,
    pub jwt_keys: Vec<JwtKeySpec>,
    pub signing_kid: String,
    pub config: AuthConfig,
    /// An identity provider whose access tokens are accepted.
    pub provider: Option<provider::ProviderConfig>,
}

/// The opened identity service: the authenticator, and where the Auth
/// actor hears other replicas.
pub struct Identity {
    pub authenticator: Arc<Authenticator>,
    pub events: EventSource,
    /// The same store, for the usage ledger, the audit log and quotas.
    pub governance: Arc<dyn crate::usage::GovernanceStore>,
}

/// Why the identity service cannot open at start-up.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "security.pepper must be set when storage.database_url is set: every replica sharing the \
         database must hash keys with the same pepper"
    )]
    PepperRequired,
    #[error("security.pepper: {0}")]
    Pepper(SecretError),
    #[error("{}: {source}", path.display())]
    PepperFile { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Jwt(#[from] jwt::JwtKeyError),
    #[error("PostgreSQL: {0}")]
    Postgres(StoreError),
    #[error("database_url: {0}")]
    DatabaseUrl(#[from] tokio_postgres::Error),
    #[error("{}: {source}", path.display())]
    Embedded { path: PathBuf, source: StoreError },
    #[error(transparent)]
    Events(#[from] crate::redis::RedisError),
    #[error(transparent)]
    Hashing(#[from] hashing::HashingStartError),
    #[error("auth.oidc: {0}")]
    Provider(#[from] provider::ProviderError),
}

/// Opens the store (applying migrations), loads the pepper and the JWT
/// keys, and connects the event bus.
pub async fn open(options: IdentityOptions) -> Result<Identity, IdentityError> {
    let pepper = match (&options.pepper, &options.postgres) {
        (Some(pepper), _) => pepper.as_bytes().to_vec(),
        (None, Some(_)) => return Err(IdentityError::PepperRequired),
        (None, None) => data_dir_pepper(&options.data_dir)?,
    };
    let hasher = secrets::KeyHasher::new(&pepper).map_err(IdentityError::Pepper)?;
    // The default HS256 secret derives from the pepper, so replicas that
    // share the pepper share it too, and there is one secret to manage.
    let derived_secret = hmac::Hmac::<sha2::Sha256>::new_from_slice(&pepper)
        .map(|mac| mac.chain_update(b"blaze jwt hs256 v1").finalize().into_bytes().to_vec())
        .map_err(|_| IdentityError::Pepper(SecretError::ShortPepper))?;
    let jwt = jwt::JwtKeys::load(
        &options.jwt_keys,
        &options.signing_kid,
        Some(derived_secret),
        &options.config.jwt,
    )?;
    type Stores = (Arc<dyn Store>, Arc<dyn crate::usage::GovernanceStore>);
    let ((store, governance), pool, events): (Stores, _, _) = match &options.postgres {
        Some(postgres) => {
            let store = PostgresStore::connect(postgres).await.map_err(IdentityError::Postgres)?;
            let pool = store.pool().clone();
            let events = match &options.redis_url {
                Some(url) => EventSource::Redis(url.clone()),
                None => EventSource::Postgres(Box::new(store.listen_config(postgres)?)),
            };
            let store = Arc::new(store);
            ((store.clone(), store), Some(pool), events)
        }
        None => {
            let path = options.data_dir.join("identity.db");
            crate::files::private_directory(&options.data_dir)?;
            let store = EmbeddedStore::open(&path)
                .map_err(|source| IdentityError::Embedded { path: path.clone(), source })?;
            let events = options.redis_url.clone().map_or(EventSource::Local, EventSource::Redis);
            let store = Arc::new(store);
            ((store.clone(), store), None, events)
        }
    };
    let bus = match &events {
        EventSource::Local => events::EventBus::Local,
        EventSource::Redis(url) => events::EventBus::redis(url)?,
        EventSource::Postgres(_) => events::EventBus::Postgres,
    };
    tracing::info!(
        store = store.backend(),
        signing_kid = jwt.signing_kid(),
        verification_kids = jwt.kids().join(","),
        events = events.name(),
        "identity store open"
    );
    let provider = match options.provider {
        Some(config) => Some(provider::Provider::load(config).await?),
        None => None,
    };
    let authenticator =
        Authenticator::new(store, pool, bus, hasher, jwt, options.config)?.with_provider(provider);
    Ok(Identity { authenticator: Arc::new(authenticator), events, governance })
}

/// The data dir's pepper, made on first start (readable by its owner only).
fn data_dir_pepper(data_dir: &Path) -> Result<Vec<u8>, IdentityError> {
    let path = data_dir.join("pepper");
    let describe = |source: std::io::Error| IdentityError::PepperFile { path: path.clone(), source };
    if let Ok(text) = std::fs::read_to_string(&path) {
        // One left readable by an older version is tightened.
        crate::files::private_file(&path)?;
        return Ok(text.trim().as_bytes().to_vec());
    }
    crate::files::private_directory(data_dir)?;
    let pepper = hex::encode(secrets::random_bytes::<32>().ok_or(SecretError::NoRandomness)?);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(pepper.as_bytes()).map_err(describe)?;
            file.sync_all().map_err(describe)?;
            Ok(pepper.into_bytes())
        }
        // Another process made it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read_to_string(&path).map(|text| text.trim().as_bytes().to_vec()).map_err(describe)
        }
        Err(error) => Err(describe(error)),
    }
}

/// The identity store as a health component: readiness waits for it.
pub struct StoreProbe(pub Arc<Authenticator>);

impl crate::health::Probe for StoreProbe {
    fn component(&self) -> &str {
        "identity_store"
    }

    fn required(&self) -> bool {
        true
    }

    fn check(&self) -> BoxFuture<'static, Result<(), ProbeError>> {
        let store = self.0.store().clone();
        Box::pin(async move {
            let limit = Duration::from_secs(2);
            tokio::time::timeout(limit, store.ping())
                .await
                .map_err(|_| ProbeError::Timeout(limit))?
                .map_err(|error| ProbeError::Down(error.to_string()))
        })
    }
}
