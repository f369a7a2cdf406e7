//! Records in and out of PostgreSQL rows, apart from the backend's
//! connection and transaction logic: the column order here must match the
//! SELECT and INSERT text in `schema.rs`, and is easiest checked side by
//! side with it.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::postgres::failed;
use super::schema;
use super::{
    limit_columns, limits_from, scopes_parse, scopes_text, KeyRecord, RefreshRecord, Revocation,
    RevocationKind, Role, StoreResult, User, UserStatus,
};

pub(super) fn user_from(row: &Row) -> StoreResult<User> {
    Ok(User {
        id: row.get(0),
        email: row.get(1),
        name: row.get(2),
        role: Role::parse(row.get(3))?,
        status: UserStatus::parse(row.get(4))?,
        password_hash: row.get(5),
        created_at: row.get(6),
        updated_at: row.get(7),
        limits: limits_from(row.get(8), row.get(9)),
        team: row.get(10),
    })
}

pub(super) fn key_from(row: &Row) -> KeyRecord {
    KeyRecord {
        id: row.get(0),
        user_id: row.get(1),
        name: row.get(2),
        secret_hash: row.get(3),
        scopes: scopes_parse(row.get(4)),
        created_at: row.get(5),
        expires_at: row.get(6),
        revoked_at: row.get(7),
        last_used_at: row.get(8),
        replaced_by: row.get(9),
        limits: limits_from(row.get(10), row.get(11)),
        lineage: row.get(12),
    }
}

pub(super) fn refresh_from(row: &Row) -> RefreshRecord {
    RefreshRecord {
        jti: row.get(0),
        family_id: row.get(1),
        user_id: row.get(2),
        expires_at: row.get(3),
        used_at: row.get(4),
        revoked_at: row.get(5),
    }
}

pub(super) async fn insert_user(client: &impl GenericClient, user: &User) -> StoreResult<()> {
    let statement = client.prepare_cached(&schema::insert_user()).await.map_err(failed)?;
    client
        .execute(
            &statement,
            &[
                &user.id,
                &user.email,
                &user.name,
                &user.role.as_str(),
                &user.status.as_str(),
                &user.password_hash,
                &user.created_at,
                &user.updated_at,
                &limit_columns(&user.limits)[0],
                &limit_columns(&user.limits)[1],
                &user.team,
            ],
        )
        .await
        .map(drop)
        .map_err(failed)
}

pub(super) async fn insert_key(client: &impl GenericClient, key: &KeyRecord) -> StoreResult<()> {
    let statement = client.prepare_cached(&schema::insert_key()).await.map_err(failed)?;
    client
        .execute(
            &statement,
            &[
                &key.id,
                &key.user_id,
                &key.name,
                &key.secret_hash,
                &scopes_text(&key.scopes),
                &key.created_at,
                &key.expires_at,
                &key.revoked_at,
                &key.last_used_at,
                &key.replaced_by,
                &limit_columns(&key.limits)[0],
                &limit_columns(&key.limits)[1],
                &key.lineage,
            ],
        )
        .await
        .map(drop)
        .map_err(failed)
}

pub(super) async fn select_key(client: &impl GenericClient, id: &str) -> StoreResult<Option<KeyRecord>> {
    let statement = client.prepare_cached(&schema::key_by_id()).await.map_err(failed)?;
    let row = client.query_opt(&statement, &[&id]).await.map_err(failed)?;
    Ok(row.as_ref().map(key_from))
}

pub(super) async fn select_user(
    client: &impl GenericClient,
    sql: &str,
    value: &str,
) -> StoreResult<Option<User>> {
    let statement = client.prepare_cached(sql).await.map_err(failed)?;
    let row = client.query_opt(&statement, &[&value]).await.map_err(failed)?;
    row.as_ref().map(user_from).transpose()
}

pub(super) fn revocation_from(row: &Row) -> StoreResult<Revocation> {
    Ok(Revocation {
        kind: RevocationKind::parse(row.get(0))?,
        subject: row.get(1),
        expires_at: row.get(2),
        created_at: row.get(3),
    })
}
