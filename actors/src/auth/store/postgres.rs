//! The shared backend: PostgreSQL through a deadpool pool, prepared
//! statements cached per connection, migrations under an advisory lock so
//! replicas starting together apply them once.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use tokio_postgres::NoTls;

use super::postgres_rows::{
    insert_key, insert_user, key_from, refresh_from, revocation_from, select_key, select_user, user_from,
};
use super::schema::{self, MIGRATIONS};
use super::{
    limit_columns, KeyRecord, RefreshRecord, RefreshUse, Revocation, Store, StoreError, StoreResult, User,
    UserChanges,
};

/// An arbitrary constant naming Blaze's migration and bootstrap lock.
const ADVISORY_LOCK: i64 = 0x626c_617a_6501;

/// The pool's shape and timeouts, from `storage.postgres`.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    pub url: String,
    /// The schema Blaze's tables live in (created if missing).
    pub schema: String,
    pub min_connections: usize,
    pub max_connections: usize,
    pub wait_timeout: Duration,
    pub create_timeout: Duration,
    pub recycle_timeout: Duration,
}

#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

pub(crate) fn failed(error: tokio_postgres::Error) -> StoreError {
    match error.code() {
        Some(code) if *code == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
            StoreError::Conflict(error.to_string())
        }
        _ => StoreError::Unavailable(error.to_string()),
    }
}

fn pool_failed(error: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// Only a plain identifier may name the schema: it is spliced into SQL.
pub fn valid_schema_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().next().is_some_and(|byte| byte.is_ascii_lowercase() || byte == b'_')
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
}

impl PostgresStore {
    /// Connects, opens `min_connections`, and applies the migrations.
    pub async fn connect(options: &PostgresOptions) -> StoreResult<Self> {
        if !valid_schema_name(&options.schema) {
            return Err(StoreError::Unavailable(format!("invalid schema name `{}`", options.schema)));
        }
        let mut config: tokio_postgres::Config =
            options.url.parse().map_err(|error: tokio_postgres::Error| {
                StoreError::Unavailable(format!("database_url: {error}"))
            })?;
        config.options(format!("-c search_path={}", options.schema));
        config.connect_timeout(options.create_timeout);
        config.application_name("blaze");
        let manager =
            Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.create_timeout))
            .recycle_timeout(Some(options.recycle_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        let store = Self { pool };
        store.migrate(&options.schema).await?;
        // Open the minimum up front so the first requests do not pay for it.
        let mut warm = Vec::new();
        for _ in 0..options.min_connections.min(options.max_connections) {
            warm.push(store.client().await?);
        }
        drop(warm);
        Ok(store)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The config of a dedicated connection that LISTENs for events.
    pub fn listen_config(
        &self,
        options: &PostgresOptions,
    ) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
        let mut config: tokio_postgres::Config = options.url.parse()?;
        config.connect_timeout(options.create_timeout);
        config.application_name("blaze-events");
        Ok(config)
    }

    async fn client(&self) -> StoreResult<Object> {
        self.pool.get().await.map_err(pool_failed)
    }

    async fn migrate(&self, schema_name: &str) -> StoreResult<()> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(failed)?;
        transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&ADVISORY_LOCK]).await.map_err(failed)?;
        transaction
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema_name}"))
            .await
            .map_err(failed)?;
        transaction.batch_execute(schema::CREATE_VERSION_TABLE).await.map_err(failed)?;
        let current: i32 = transaction.query_one(schema::CURRENT_VERSION, &[]).await.map_err(failed)?.get(0);
        for (index, statements) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
            for statement in statements.iter().chain(schema::extra(schema::POSTGRES_EXTRA, index)) {
                transaction.batch_execute(statement).await.map_err(failed)?;
            }
            let version = index as i32 + 1;
            transaction
                .execute(schema::RECORD_VERSION, &[&version, &crate::auth::now_ms()])
                .await
                .map_err(failed)?;
        }
        transaction.commit().await.map_err(failed)
    }
}

impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let client = self.client().await?;
            client.simple_query("SELECT 1").await.map(drop).map_err(failed)
        })
    }

    fn bootstrap(&self, admin: User, key: KeyRecord) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let transaction = client.transaction().await.map_err(failed)?;
            transaction
                .execute("SELECT pg_advisory_xact_lock($1)", &[&ADVISORY_LOCK])
                .await
                .map_err(failed)?;
            let users: i64 = transaction.query_one(schema::COUNT_USERS, &[]).await.map_err(failed)?.get(0);
            if users > 0 {
                return Ok(false);
            }
            insert_user(&transaction, &admin).await?;
            insert_key(&transaction, &key).await?;
            transaction.commit().await.map_err(failed)?;
            Ok(true)
        })
    }

    fn create_user(&self, user: User) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move { insert_user(&self.client().await?, &user).await })
    }

    fn user(&self, id: String) -> BoxFuture<'_, StoreResult<Option<User>>> {
        Box::pin(async move { select_user(&self.client().await?, &schema::user_by_id(), &id).await })
    }

    fn user_by_email(&self, email: String) -> BoxFuture<'_, StoreResult<Option<User>>> {
        Box::pin(async move { select_user(&self.client().await?, &schema::user_by_email(), &email).await })
    }

    fn external_user(&self, external_id: String) -> BoxFuture<'_, StoreResult<Option<String>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client.query_opt(schema::EXTERNAL_USER, &[&external_id]).await.map_err(failed)?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn link_external(&self, external_id: String, user_id: String, at: i64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let client = self.client().await?;
            client
                .execute(schema::LINK_EXTERNAL, &[&external_id, &user_id, &at])
                .await
                .map(drop)
                .map_err(failed)
        })
    }

    fn users(&self, after: Option<String>, limit: u32) -> BoxFuture<'_, StoreResult<Vec<User>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client.prepare_cached(&schema::users_after()).await.map_err(failed)?;
            let rows = client
                .query(&statement, &[&after.unwrap_or_default(), &i64::from(limit)])
                .await
                .map_err(failed)?;
            rows.iter().map(user_from).collect()
        })
    }

    fn update_user(
        &self,
        id: String,
        changes: UserChanges,
        at: i64,
    ) -> BoxFuture<'_, StoreResult<Option<User>>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let transaction = client.transaction().await.map_err(failed)?;
            let locked = format!("{} FOR UPDATE", schema::user_by_id());
            let Some(mut user) = select_user(&transaction, &locked, &id).await? else {
                return Ok(None);
            };
            super::apply_changes(&mut user, changes, at);
            transaction
                .execute(
                    schema::UPDATE_USER,
                    &[
                        &user.id,
                        &user.name,
                        &user.role.as_str(),
                        &user.status.as_str(),
                        &user.password_hash,
                        &user.updated_at,
                        &limit_columns(&user.limits)[0],
                        &limit_columns(&user.limits)[1],
                        &user.team,
                    ],
                )
                .await
                .map_err(failed)?;
            transaction.commit().await.map_err(failed)?;
            Ok(Some(user))
        })
    }

    fn create_key(&self, key: KeyRecord, max_active: u64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let transaction = client.transaction().await.map_err(failed)?;
            // The user's row lock serialises concurrent creations, so the
            // count cannot be passed by two at once.
            let locked = format!("{} FOR UPDATE", schema::user_by_id());
            if select_user(&transaction, &locked, &key.user_id).await?.is_none() {
                return Err(StoreError::Conflict(format!("no user `{}`", key.user_id)));
            }
            let statement = transaction.prepare_cached(schema::COUNT_ACTIVE_KEYS).await.map_err(failed)?;
            let active: i64 = transaction
                .query_one(&statement, &[&key.user_id, &key.created_at])
                .await
                .map_err(failed)?
                .get(0);
            let active = active.max(0) as u64;
            if active >= max_active {
                return Err(StoreError::KeyLimit { active });
            }
            insert_key(&transaction, &key).await?;
            transaction.commit().await.map_err(failed)
        })
    }

    fn key(&self, id: String) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>> {
        Box::pin(async move { select_key(&self.client().await?, &id).await })
    }

    fn keys(
        &self,
        user_id: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> BoxFuture<'_, StoreResult<Vec<KeyRecord>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let (after, limit) = (after.unwrap_or_default(), i64::from(limit));
            let rows = match &user_id {
                Some(user_id) => {
                    let statement =
                        client.prepare_cached(&schema::keys_of_user_after()).await.map_err(failed)?;
                    client.query(&statement, &[user_id, &after, &limit]).await
                }
                None => {
                    let statement = client.prepare_cached(&schema::keys_after()).await.map_err(failed)?;
                    client.query(&statement, &[&after, &limit]).await
                }
            };
            Ok(rows.map_err(failed)?.iter().map(key_from).collect())
        })
    }

    fn revoke_key(&self, id: String, at: i64) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client.prepare_cached(schema::REVOKE_KEY).await.map_err(failed)?;
            client.execute(&statement, &[&id, &at]).await.map_err(failed)?;
            select_key(&client, &id).await
        })
    }

    fn rotate_key(
        &self,
        old_id: String,
        new: KeyRecord,
        old_expires_at: i64,
    ) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let transaction = client.transaction().await.map_err(failed)?;
            let changed = transaction
                .execute(schema::RETIRE_KEY, &[&old_id, &new.id, &old_expires_at, &new.created_at])
                .await
                .map_err(failed)?;
            if changed == 0 {
                return Ok(None);
            }
            insert_key(&transaction, &new).await?;
            let old = select_key(&transaction, &old_id).await?;
            transaction.commit().await.map_err(failed)?;
            Ok(old)
        })
    }

    fn touch_keys(&self, uses: Vec<(String, i64)>) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let transaction = client.transaction().await.map_err(failed)?;
            let statement = transaction.prepare_cached(schema::TOUCH_KEY).await.map_err(failed)?;
            for (id, at) in &uses {
                transaction.execute(&statement, &[id, at]).await.map_err(failed)?;
            }
            transaction.commit().await.map_err(failed)
        })
    }

    fn insert_refresh(&self, token: RefreshRecord) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client.prepare_cached(schema::INSERT_REFRESH).await.map_err(failed)?;
            client
                .execute(&statement, &[&token.jti, &token.family_id, &token.user_id, &token.expires_at])
                .await
                .map(drop)
                .map_err(failed)
        })
    }

    fn use_refresh(&self, jti: String, at: i64) -> BoxFuture<'_, StoreResult<RefreshUse>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let transaction = client.transaction().await.map_err(failed)?;
            let spent = transaction.execute(schema::SPEND_REFRESH, &[&jti, &at]).await.map_err(failed)?;
            let record = transaction
                .query_opt(schema::REFRESH_BY_JTI, &[&jti])
                .await
                .map_err(failed)?
                .as_ref()
                .map(refresh_from);
            let outcome = super::refresh_outcome(spent, record, at);
            if let RefreshUse::Replayed(record) = &outcome {
                transaction
                    .execute(schema::REVOKE_FAMILY, &[&record.family_id, &at])
                    .await
                    .map_err(failed)?;
            }
            transaction.commit().await.map_err(failed)?;
            Ok(outcome)
        })
    }

    fn revoke_family(&self, family_id: String, at: i64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let client = self.client().await?;
            client.execute(schema::REVOKE_FAMILY, &[&family_id, &at]).await.map(drop).map_err(failed)
        })
    }

    fn add_revocation(&self, revocation: Revocation) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let client = self.client().await?;
            client
                .execute(
                    schema::INSERT_REVOCATION,
                    &[
                        &revocation.kind.as_str(),
                        &revocation.subject,
                        &revocation.expires_at,
                        &revocation.created_at,
                    ],
                )
                .await
                .map(drop)
                .map_err(failed)
        })
    }

    fn revocations(&self, now: i64) -> BoxFuture<'_, StoreResult<Vec<Revocation>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client.prepare_cached(schema::REVOCATIONS_IN_FORCE).await.map_err(failed)?;
            let rows = client.query(&statement, &[&now]).await.map_err(failed)?;
            rows.iter().map(revocation_from).collect()
        })
    }

    fn prune(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let client = self.client().await?;
            let revocations = client.execute(schema::PRUNE_REVOCATIONS, &[&now]).await.map_err(failed)?;
            let refresh = client.execute(schema::PRUNE_REFRESH, &[&now]).await.map_err(failed)?;
            Ok(revocations + refresh)
        })
    }
}
