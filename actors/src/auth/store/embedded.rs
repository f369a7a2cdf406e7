//! The embedded backend: one SQLite file under the data dir, in WAL mode.
//! Calls run on the blocking pool, one at a time (SQLite has one writer).

use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::schema::{self, MIGRATIONS};
use super::{
    limit_columns, limits_from, scopes_parse, scopes_text, KeyRecord, RefreshRecord, RefreshUse, Revocation,
    RevocationKind, Role, Store, StoreError, StoreResult, User, UserChanges, UserStatus,
};

#[derive(Clone)]
pub struct EmbeddedStore {
    connection: Arc<Mutex<Connection>>,
}

/// `$1` placeholders become SQLite's `?1`.
pub(crate) fn sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}

pub(crate) fn failed(error: rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::SqliteFailure(code, _) if code.code == rusqlite::ErrorCode::ConstraintViolation => {
            StoreError::Conflict(error.to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database file and applies the migrations.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(parent) = path.parent() {
            crate::files::private_directory(parent)
                .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        }
        crate::files::private_file(path).map_err(|error| StoreError::Unavailable(error.to_string()))?;
        let mut connection = Connection::open(path).map_err(failed)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
            )
            .map_err(failed)?;
        connection.busy_timeout(std::time::Duration::from_secs(5)).map_err(failed)?;
        migrate(&mut connection)?;
        Ok(Self { connection: Arc::new(Mutex::new(connection)) })
    }

    pub(crate) fn run<T, F>(&self, work: F) -> BoxFuture<'static, StoreResult<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let connection = self.connection.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || work(&mut connection.lock()))
                .await
                .map_err(|error| StoreError::Unavailable(format!("the store's thread failed: {error}")))?
        })
    }
}

fn migrate(connection: &mut Connection) -> StoreResult<()> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(failed)?;
    transaction.execute(schema::CREATE_VERSION_TABLE, []).map_err(failed)?;
    let current: i64 =
        transaction.query_row(schema::CURRENT_VERSION, [], |row| row.get(0)).map_err(failed)?;
    for (index, statements) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        for statement in statements.iter().chain(schema::extra(schema::SQLITE_EXTRA, index)) {
            transaction.execute(statement, []).map_err(failed)?;
        }
        let version = index as i64 + 1;
        transaction
            .execute(&sqlite(schema::RECORD_VERSION), params![version, super::super::now_ms()])
            .map_err(failed)?;
    }
    transaction.commit().map_err(failed)
}

fn user_from(row: &Row<'_>) -> rusqlite::Result<(User, String, String)> {
    let role: String = row.get(3)?;
    let status: String = row.get(4)?;
    let user = User {
        id: row.get(0)?,
        email: row.get(1)?,
        name: row.get(2)?,
        role: Role::User,
        status: UserStatus::Active,
        password_hash: row.get(5)?,
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
        limits: limits_from(row.get(8)?, row.get(9)?),
        team: row.get(10)?,
    };
    Ok((user, role, status))
}

fn finish_user((mut user, role, status): (User, String, String)) -> StoreResult<User> {
    user.role = Role::parse(&role)?;
    user.status = UserStatus::parse(&status)?;
    Ok(user)
}

fn key_from(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let scopes: String = row.get(4)?;
    Ok(KeyRecord {
        id: row.get(0)?,
        user_id: row.get(1)?,
        name: row.get(2)?,
        secret_hash: row.get(3)?,
        scopes: scopes_parse(&scopes),
        created_at: row.get(5)?,
        expires_at: row.get(6)?,
        revoked_at: row.get(7)?,
        last_used_at: row.get(8)?,
        replaced_by: row.get(9)?,
        limits: limits_from(row.get(10)?, row.get(11)?),
        lineage: row.get(12)?,
    })
}

fn refresh_from(row: &Row<'_>) -> rusqlite::Result<RefreshRecord> {
    Ok(RefreshRecord {
        jti: row.get(0)?,
        family_id: row.get(1)?,
        user_id: row.get(2)?,
        expires_at: row.get(3)?,
        used_at: row.get(4)?,
        revoked_at: row.get(5)?,
    })
}

fn insert_user(connection: &Connection, user: &User) -> StoreResult<()> {
    connection
        .execute(
            &sqlite(&schema::insert_user()),
            params![
                user.id,
                user.email,
                user.name,
                user.role.as_str(),
                user.status.as_str(),
                user.password_hash,
                user.created_at,
                user.updated_at,
                limit_columns(&user.limits)[0],
                limit_columns(&user.limits)[1],
                user.team
            ],
        )
        .map(drop)
        .map_err(failed)
}

fn insert_key(connection: &Connection, key: &KeyRecord) -> StoreResult<()> {
    connection
        .execute(
            &sqlite(&schema::insert_key()),
            params![
                key.id,
                key.user_id,
                key.name,
                key.secret_hash,
                scopes_text(&key.scopes),
                key.created_at,
                key.expires_at,
                key.revoked_at,
                key.last_used_at,
                key.replaced_by,
                limit_columns(&key.limits)[0],
                limit_columns(&key.limits)[1],
                key.lineage
            ],
        )
        .map(drop)
        .map_err(failed)
}

fn select_key(connection: &Connection, id: &str) -> StoreResult<Option<KeyRecord>> {
    connection
        .prepare_cached(&sqlite(&schema::key_by_id()))
        .and_then(|mut statement| statement.query_row([id], key_from).optional())
        .map_err(failed)
}

fn select_user(connection: &Connection, sql: &str, value: &str) -> StoreResult<Option<User>> {
    let row = connection
        .prepare_cached(&sqlite(sql))
        .and_then(|mut statement| statement.query_row([value], user_from).optional())
        .map_err(failed)?;
    row.map(finish_user).transpose()
}

impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        self.run(|connection| connection.query_row("SELECT 1", [], |_| Ok(())).map_err(failed))
    }

    fn bootstrap(&self, admin: User, key: KeyRecord) -> BoxFuture<'_, StoreResult<bool>> {
        self.run(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(failed)?;
            let users: i64 =
                transaction.query_row(schema::COUNT_USERS, [], |row| row.get(0)).map_err(failed)?;
            if users > 0 {
                return Ok(false);
            }
            insert_user(&transaction, &admin)?;
            insert_key(&transaction, &key)?;
            transaction.commit().map_err(failed)?;
            Ok(true)
        })
    }

    fn create_user(&self, user: User) -> BoxFuture<'_, StoreResult<()>> {
        self.run(move |connection| insert_user(connection, &user))
    }

    fn user(&self, id: String) -> BoxFuture<'_, StoreResult<Option<User>>> {
        self.run(move |connection| select_user(connection, &schema::user_by_id(), &id))
    }

    fn user_by_email(&self, email: String) -> BoxFuture<'_, StoreResult<Option<User>>> {
        self.run(move |connection| select_user(connection, &schema::user_by_email(), &email))
    }

    fn external_user(&self, external_id: String) -> BoxFuture<'_, StoreResult<Option<String>>> {
        self.run(move |connection| {
            connection
                .query_row(&sqlite(schema::EXTERNAL_USER), [external_id], |row| row.get(0))
                .optional()
                .map_err(failed)
        })
    }

    fn link_external(&self, external_id: String, user_id: String, at: i64) -> BoxFuture<'_, StoreResult<()>> {
        self.run(move |connection| {
            connection
                .execute(&sqlite(schema::LINK_EXTERNAL), params![external_id, user_id, at])
                .map(drop)
                .map_err(failed)
        })
    }

    fn users(&self, after: Option<String>, limit: u32) -> BoxFuture<'_, StoreResult<Vec<User>>> {
        self.run(move |connection| {
            let mut statement = connection.prepare_cached(&sqlite(&schema::users_after())).map_err(failed)?;
            let rows = statement
                .query_map(params![after.unwrap_or_default(), limit], user_from)
                .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
                .map_err(failed)?;
            rows.into_iter().map(finish_user).collect()
        })
    }

    fn update_user(
        &self,
        id: String,
        changes: UserChanges,
        at: i64,
    ) -> BoxFuture<'_, StoreResult<Option<User>>> {
        self.run(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(failed)?;
            let Some(mut user) = select_user(&transaction, &schema::user_by_id(), &id)? else {
                return Ok(None);
            };
            super::apply_changes(&mut user, changes, at);
            transaction
                .execute(
                    &sqlite(schema::UPDATE_USER),
                    params![
                        user.id,
                        user.name,
                        user.role.as_str(),
                        user.status.as_str(),
                        user.password_hash,
                        user.updated_at,
                        limit_columns(&user.limits)[0],
                        limit_columns(&user.limits)[1],
                        user.team
                    ],
                )
                .map_err(failed)?;
            transaction.commit().map_err(failed)?;
            Ok(Some(user))
        })
    }

    fn create_key(&self, key: KeyRecord, max_active: u64) -> BoxFuture<'_, StoreResult<()>> {
        self.run(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(failed)?;
            let active: i64 = transaction
                .query_row(&sqlite(schema::COUNT_ACTIVE_KEYS), params![key.user_id, key.created_at], |row| {
                    row.get(0)
                })
                .map_err(failed)?;
            if active.max(0) as u64 >= max_active {
                return Err(StoreError::KeyLimit { active: active.max(0) as u64 });
            }
            insert_key(&transaction, &key)?;
            transaction.commit().map_err(failed)
        })
    }

    fn key(&self, id: String) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>> {
        self.run(move |connection| select_key(connection, &id))
    }

    fn keys(
        &self,
        user_id: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> BoxFuture<'_, StoreResult<Vec<KeyRecord>>> {
        self.run(move |connection| {
            let after = after.unwrap_or_default();
            let rows = match &user_id {
                Some(user_id) => connection.prepare_cached(&sqlite(&schema::keys_of_user_after())).and_then(
                    |mut statement| statement.query_map(params![user_id, after, limit], key_from)?.collect(),
                ),
                None => {
                    connection.prepare_cached(&sqlite(&schema::keys_after())).and_then(|mut statement| {
                        statement.query_map(params![after, limit], key_from)?.collect()
                    })
                }
            };
            rows.map_err(failed)
        })
    }

    fn revoke_key(&self, id: String, at: i64) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>> {
        self.run(move |connection| {
            connection.execute(&sqlite(schema::REVOKE_KEY), params![id, at]).map_err(failed)?;
            select_key(connection, &id)
        })
    }

    fn rotate_key(
        &self,
        old_id: String,
        new: KeyRecord,
        old_expires_at: i64,
    ) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>> {
        self.run(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(failed)?;
            let changed = transaction
                .execute(&sqlite(schema::RETIRE_KEY), params![old_id, new.id, old_expires_at, new.created_at])
                .map_err(failed)?;
            if changed == 0 {
                return Ok(None);
            }
            insert_key(&transaction, &new)?;
            let old = select_key(&transaction, &old_id)?;
            transaction.commit().map_err(failed)?;
            Ok(old)
        })
    }

    fn touch_keys(&self, uses: Vec<(String, i64)>) -> BoxFuture<'_, StoreResult<()>> {
        self.run(move |connection| {
            let transaction = connection.transaction().map_err(failed)?;
            {
                let mut statement = transaction.prepare_cached(&sqlite(schema::TOUCH_KEY)).map_err(failed)?;
                for (id, at) in &uses {
                    statement.execute(params![id, at]).map_err(failed)?;
                }
            }
            transaction.commit().map_err(failed)
        })
    }

    fn insert_refresh(&self, token: RefreshRecord) -> BoxFuture<'_, StoreResult<()>> {
        self.run(move |connection| {
            connection
                .execute(
                    &sqlite(schema::INSERT_REFRESH),
                    params![token.jti, token.family_id, token.user_id, token.expires_at],
                )
                .map(drop)
                .map_err(failed)
        })
    }

    fn use_refresh(&self, jti: String, at: i64) -> BoxFuture<'_, StoreResult<RefreshUse>> {
        self.run(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(failed)?;
            let spent =
                transaction.execute(&sqlite(schema::SPEND_REFRESH), params![jti, at]).map_err(failed)?;
            let record = transaction
                .query_row(&sqlite(schema::REFRESH_BY_JTI), [&jti], refresh_from)
                .optional()
                .map_err(failed)?;
            let outcome = super::refresh_outcome(spent as u64, record, at);
            if let RefreshUse::Replayed(record) = &outcome {
                transaction
                    .execute(&sqlite(schema::REVOKE_FAMILY), params![record.family_id, at])
                    .map_err(failed)?;
            }
            transaction.commit().map_err(failed)?;
            Ok(outcome)
        })
    }

    fn revoke_family(&self, family_id: String, at: i64) -> BoxFuture<'_, StoreResult<()>> {
        self.run(move |connection| {
            connection
                .execute(&sqlite(schema::REVOKE_FAMILY), params![family_id, at])
                .map(drop)
                .map_err(failed)
        })
    }

    fn add_revocation(&self, revocation: Revocation) -> BoxFuture<'_, StoreResult<()>> {
        self.run(move |connection| {
            connection
                .execute(
                    &sqlite(schema::INSERT_REVOCATION),
                    params![
                        revocation.kind.as_str(),
                        revocation.subject,
                        revocation.expires_at,
                        revocation.created_at
                    ],
                )
                .map(drop)
                .map_err(failed)
        })
    }

    fn revocations(&self, now: i64) -> BoxFuture<'_, StoreResult<Vec<Revocation>>> {
        self.run(move |connection| {
            let mut statement =
                connection.prepare_cached(&sqlite(schema::REVOCATIONS_IN_FORCE)).map_err(failed)?;
            let rows: Vec<(String, String, i64, i64)> = statement
                .query_map([now], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
                .and_then(Iterator::collect)
                .map_err(failed)?;
            rows.into_iter()
                .map(|(kind, subject, expires_at, created_at)| {
                    Ok(Revocation { kind: RevocationKind::parse(&kind)?, subject, expires_at, created_at })
                })
                .collect()
        })
    }

    fn prune(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
        self.run(move |connection| {
            let revocations =
                connection.execute(&sqlite(schema::PRUNE_REVOCATIONS), [now]).map_err(failed)?;
            let refresh = connection.execute(&sqlite(schema::PRUNE_REFRESH), [now]).map_err(failed)?;
            Ok((revocations + refresh) as u64)
        })
    }
}
