//! The governance tables in the embedded SQLite file.

use futures_util::future::BoxFuture;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Row};

use super::sql::{self, counted, stored, Value};
use super::{
    AuditEntry, AuditQuery, GovernanceStore, QuotaLimits, QuotaScope, Spent, Subject, UsageQuery,
    UsageRecord, UsageRow,
};
use crate::auth::store::embedded::{failed, sqlite};
use crate::auth::{EmbeddedStore, StoreError, StoreResult};

fn bind(values: Vec<Value>) -> Vec<SqlValue> {
    values
        .into_iter()
        .map(|value| match value {
            Value::Int(number) => SqlValue::Integer(number),
            Value::Text(text) => SqlValue::Text(text),
        })
        .collect()
}

fn audit_from(row: &Row<'_>) -> rusqlite::Result<(AuditEntry, String)> {
    let change: String = row.get(5)?;
    let entry = AuditEntry {
        id: row.get(0)?,
        at: row.get(1)?,
        actor_id: row.get(2)?,
        action: row.get(3)?,
        target: row.get(4)?,
        change: serde_json::Value::Null,
        address: row.get(6)?,
        request_id: row.get(7)?,
    };
    Ok((entry, change))
}

pub(super) fn parse_change((mut entry, change): (AuditEntry, String)) -> StoreResult<AuditEntry> {
    entry.change = serde_json::from_str(&change)
        .map_err(|error| StoreError::Corrupt(format!("audit entry {}: {error}", entry.id)))?;
    Ok(entry)
}

pub(super) fn parse_quota(
    scope: &str,
    subject: String,
    limits: &str,
) -> StoreResult<(QuotaScope, String, QuotaLimits)> {
    let scope =
        QuotaScope::parse(scope).ok_or_else(|| StoreError::Corrupt(format!("quota scope `{scope}`")))?;
    let limits = serde_json::from_str(limits)
        .map_err(|error| StoreError::Corrupt(format!("quota of {subject}: {error}")))?;
    Ok((scope, subject, limits))
}

impl GovernanceStore for EmbeddedStore {
    fn insert_usage(&self, rows: std::sync::Arc<Vec<UsageRecord>>) -> BoxFuture<'_, StoreResult<()>> {
        self.run(move |connection| {
            let transaction = connection.transaction().map_err(failed)?;
            {
                let insert = format!(
                    "INSERT INTO usage_records ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                    sql::USAGE_COLUMNS
                );
                let mut statement = transaction.prepare_cached(&insert).map_err(failed)?;
                for row in rows.iter() {
                    statement
                        .execute(params![
                            row.at,
                            row.request_id,
                            row.key_id,
                            row.key_lineage,
                            row.user_id,
                            row.team,
                            row.model,
                            row.endpoint,
                            stored(row.prompt_tokens),
                            stored(row.completion_tokens),
                            stored(row.cached_tokens),
                            row.cache,
                            row.status,
                            stored(row.latency_ms),
                            row.first_token_ms.map(stored),
                            stored(row.cost_micros)
                        ])
                        .map_err(failed)?;
                }
                let mut upsert = transaction.prepare_cached(&sqlite(&sql::upsert_rollup())).map_err(failed)?;
                for (group, sums) in sql::rollup(&rows) {
                    let (hour, user, key, lineage, team, model, endpoint) = group;
                    upsert
                        .execute(params![
                            hour,
                            user,
                            key,
                            lineage,
                            team,
                            model,
                            endpoint,
                            sums.requests,
                            sums.errors,
                            sums.refused,
                            sums.prompt_tokens,
                            sums.completion_tokens,
                            sums.cached_tokens,
                            sums.cost_micros
                        ])
                        .map_err(failed)?;
                }
            }
            transaction.commit().map_err(failed)
        })
    }

    fn usage_report(&self, query: UsageQuery) -> BoxFuture<'_, StoreResult<Vec<UsageRow>>> {
        self.run(move |connection| {
            let groups = query.group_by.len();
            let (text, values) = sql::usage_report(&query);
            let mut statement = connection.prepare(&sqlite(&text)).map_err(failed)?;
            let rows = statement
                .query_map(params_from_iter(bind(values)), |row| {
                    let mut group = Vec::with_capacity(groups);
                    for index in 0..groups {
                        group.push(row.get::<_, Option<String>>(index)?);
                    }
                    Ok(UsageRow {
                        group,
                        requests: counted(row.get(groups)?),
                        errors: counted(row.get(groups + 1)?),
                        prompt_tokens: counted(row.get(groups + 2)?),
                        completion_tokens: counted(row.get(groups + 3)?),
                        cached_tokens: counted(row.get(groups + 4)?),
                        cost_micros: counted(row.get(groups + 5)?),
                    })
                })
                .map_err(failed)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(failed)
        })
    }

    fn spent(&self, subject: Subject, since: i64) -> BoxFuture<'_, StoreResult<Spent>> {
        self.run(move |connection| {
            let (text, values) = sql::spent(&subject, since);
            connection
                .query_row(&sqlite(&text), params_from_iter(bind(values)), |row| {
                    Ok(Spent {
                        requests: counted(row.get(0)?),
                        tokens: counted(row.get(1)?),
                        cost_micros: counted(row.get(2)?),
                    })
                })
                .map_err(failed)
        })
    }

    fn prune_usage(&self, before: i64) -> BoxFuture<'_, StoreResult<u64>> {
        self.run(move |connection| {
            connection.execute(&sqlite(sql::PRUNE_ROLLUP), [before.div_euclid(3_600_000)]).map_err(failed)?;
            connection.execute(&sqlite(sql::PRUNE_USAGE), [before]).map(|rows| rows as u64).map_err(failed)
        })
    }

    fn append_audit(&self, entry: AuditEntry) -> BoxFuture<'_, StoreResult<()>> {
        self.run(move |connection| {
            connection
                .execute(
                    &sqlite(&sql::insert_audit()),
                    params![
                        entry.id,
                        entry.at,
                        entry.actor_id,
                        entry.action,
                        entry.target,
                        entry.change.to_string(),
                        entry.address,
                        entry.request_id
                    ],
                )
                .map(drop)
                .map_err(failed)
        })
    }

    fn audit(&self, query: AuditQuery) -> BoxFuture<'_, StoreResult<Vec<AuditEntry>>> {
        self.run(move |connection| {
            let (text, values) = sql::audit(&query);
            let mut statement = connection.prepare(&sqlite(&text)).map_err(failed)?;
            let rows = statement.query_map(params_from_iter(bind(values)), audit_from).map_err(failed)?;
            rows.map(|row| row.map_err(failed).and_then(parse_change)).collect()
        })
    }

    fn quotas(&self) -> BoxFuture<'_, StoreResult<Vec<(QuotaScope, String, QuotaLimits)>>> {
        self.run(move |connection| {
            let mut statement = connection.prepare_cached(sql::QUOTAS).map_err(failed)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?))
                })
                .map_err(failed)?;
            rows.map(|row| {
                row.map_err(failed).and_then(|(scope, subject, limits)| parse_quota(&scope, subject, &limits))
            })
            .collect()
        })
    }

    fn set_quota(
        &self,
        scope: QuotaScope,
        subject: String,
        limits: Option<QuotaLimits>,
        at: i64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        self.run(move |connection| {
            match limits {
                Some(limits) => {
                    let text = serde_json::to_string(&limits)
                        .map_err(|error| StoreError::Corrupt(error.to_string()))?;
                    connection
                        .execute(&sqlite(sql::UPSERT_QUOTA), params![scope.as_str(), subject, text, at])
                        .map_err(failed)?;
                }
                None => {
                    connection
                        .execute(&sqlite(sql::DELETE_QUOTA), params![scope.as_str(), subject])
                        .map_err(failed)?;
                }
            }
            Ok(())
        })
    }
}
