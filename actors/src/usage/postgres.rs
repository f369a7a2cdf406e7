//! The governance tables in PostgreSQL. A ledger batch is one INSERT of
//! arrays (`unnest`): one round trip and one plan however many rows.

use futures_util::future::BoxFuture;
use tokio_postgres::types::ToSql;

use super::embedded::{parse_change, parse_quota};
use super::sql::{self, counted, stored, Value};
use super::{
    AuditEntry, AuditQuery, GovernanceStore, QuotaLimits, QuotaScope, Spent, Subject, UsageQuery,
    UsageRecord, UsageRow,
};
use crate::auth::store::postgres::failed;
use crate::auth::{PostgresStore, StoreError, StoreResult};

type Parameter = Box<dyn ToSql + Sync + Send>;

fn bind(values: Vec<Value>) -> Vec<Parameter> {
    values
        .into_iter()
        .map(|value| -> Parameter {
            match value {
                Value::Int(number) => Box::new(number),
                Value::Text(text) => Box::new(text),
            }
        })
        .collect()
}

fn references(parameters: &[Parameter]) -> Vec<&(dyn ToSql + Sync)> {
    parameters.iter().map(|parameter| parameter.as_ref() as &(dyn ToSql + Sync)).collect()
}

const INSERT_BATCH: &str = "INSERT INTO usage_records (at, request_id, key_id, key_lineage, user_id, team, model, \
     endpoint, prompt_tokens, completion_tokens, cached_tokens, cache, status, latency_ms, first_token_ms, cost_micros) \
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
     $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::int[], $14::bigint[], $15::bigint[], \
     $16::bigint[])";

/// The rollup's upsert for a batch's groups at once, from arrays.
fn upsert_rollup_batch() -> String {
    format!(
        "INSERT INTO usage_rollup ({}) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], \
         $5::text[], $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
         $12::bigint[], $13::bigint[], $14::bigint[]) {}",
        sql::ROLLUP_COLUMNS,
        sql::ROLLUP_ON_CONFLICT
    )
}

impl PostgresStore {
    async fn connection(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool().get().await.map_err(|error| StoreError::Unavailable(error.to_string()))
    }
}

impl GovernanceStore for PostgresStore {
    fn insert_usage(&self, rows: std::sync::Arc<Vec<UsageRecord>>) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let mut client = self.connection().await?;
            let transaction = client.transaction().await.map_err(failed)?;
            let at: Vec<i64> = rows.iter().map(|row| row.at).collect();
            let request_id: Vec<&str> = rows.iter().map(|row| row.request_id.as_str()).collect();
            let key_id: Vec<Option<&str>> = rows.iter().map(|row| row.key_id.as_deref()).collect();
            let key_lineage: Vec<Option<&str>> = rows.iter().map(|row| row.key_lineage.as_deref()).collect();
            let user_id: Vec<&str> = rows.iter().map(|row| row.user_id.as_str()).collect();
            let team: Vec<Option<&str>> = rows.iter().map(|row| row.team.as_deref()).collect();
            let model: Vec<&str> = rows.iter().map(|row| row.model.as_str()).collect();
            let endpoint: Vec<&str> = rows.iter().map(|row| row.endpoint.as_str()).collect();
            let prompt: Vec<i64> = rows.iter().map(|row| stored(row.prompt_tokens)).collect();
            let completion: Vec<i64> = rows.iter().map(|row| stored(row.completion_tokens)).collect();
            let cached: Vec<i64> = rows.iter().map(|row| stored(row.cached_tokens)).collect();
            let cache: Vec<&str> = rows.iter().map(|row| row.cache.as_str()).collect();
            let status: Vec<i32> = rows.iter().map(|row| i32::from(row.status)).collect();
            let latency: Vec<i64> = rows.iter().map(|row| stored(row.latency_ms)).collect();
            let first_token: Vec<Option<i64>> =
                rows.iter().map(|row| row.first_token_ms.map(stored)).collect();
            let cost: Vec<i64> = rows.iter().map(|row| stored(row.cost_micros)).collect();
            let statement = transaction.prepare_cached(INSERT_BATCH).await.map_err(failed)?;
            transaction
                .execute(
                    &statement,
                    &[
                        &at,
                        &request_id,
                        &key_id,
                        &key_lineage,
                        &user_id,
                        &team,
                        &model,
                        &endpoint,
                        &prompt,
                        &completion,
                        &cached,
                        &cache,
                        &status,
                        &latency,
                        &first_token,
                        &cost,
                    ],
                )
                .await
                .map_err(failed)?;
            // The batch's groups in one statement (each group once, so no
            // row is touched twice by it).
            let groups = sql::rollup(&rows);
            let column =
                |pick: fn(&(sql::Group, sql::Sums)) -> i64| groups.iter().map(pick).collect::<Vec<i64>>();
            let text =
                |pick: fn(&(sql::Group, sql::Sums)) -> &str| groups.iter().map(pick).collect::<Vec<&str>>();
            let hours = column(|(group, _)| group.0);
            let users = text(|(group, _)| group.1.as_str());
            let keys = text(|(group, _)| group.2.as_str());
            let lineages = text(|(group, _)| group.3.as_str());
            let teams = text(|(group, _)| group.4.as_str());
            let models = text(|(group, _)| group.5.as_str());
            let endpoints = text(|(group, _)| group.6.as_str());
            let requests = column(|(_, sums)| sums.requests);
            let errors = column(|(_, sums)| sums.errors);
            let refused = column(|(_, sums)| sums.refused);
            let prompt = column(|(_, sums)| sums.prompt_tokens);
            let completion = column(|(_, sums)| sums.completion_tokens);
            let cached = column(|(_, sums)| sums.cached_tokens);
            let cost = column(|(_, sums)| sums.cost_micros);
            let upsert = transaction.prepare_cached(&upsert_rollup_batch()).await.map_err(failed)?;
            transaction
                .execute(
                    &upsert,
                    &[
                        &hours,
                        &users,
                        &keys,
                        &lineages,
                        &teams,
                        &models,
                        &endpoints,
                        &requests,
                        &errors,
                        &refused,
                        &prompt,
                        &completion,
                        &cached,
                        &cost,
                    ],
                )
                .await
                .map_err(failed)?;
            transaction.commit().await.map_err(failed)
        })
    }

    fn usage_report(&self, query: UsageQuery) -> BoxFuture<'_, StoreResult<Vec<UsageRow>>> {
        Box::pin(async move {
            let client = self.connection().await?;
            let groups = query.group_by.len();
            let (text, values) = sql::usage_report(&query);
            let parameters = bind(values);
            let rows = client.query(&text, &references(&parameters)).await.map_err(failed)?;
            Ok(rows
                .iter()
                .map(|row| UsageRow {
                    group: (0..groups).map(|index| row.get::<_, Option<String>>(index)).collect(),
                    requests: counted(row.get(groups)),
                    errors: counted(row.get(groups + 1)),
                    prompt_tokens: counted(row.get(groups + 2)),
                    completion_tokens: counted(row.get(groups + 3)),
                    cached_tokens: counted(row.get(groups + 4)),
                    cost_micros: counted(row.get(groups + 5)),
                })
                .collect())
        })
    }

    fn spent(&self, subject: Subject, since: i64) -> BoxFuture<'_, StoreResult<Spent>> {
        Box::pin(async move {
            let client = self.connection().await?;
            let (text, values) = sql::spent(&subject, since);
            let parameters = bind(values);
            let row = client.query_one(&text, &references(&parameters)).await.map_err(failed)?;
            Ok(Spent {
                requests: counted(row.get(0)),
                tokens: counted(row.get(1)),
                cost_micros: counted(row.get(2)),
            })
        })
    }

    fn prune_usage(&self, before: i64) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let client = self.connection().await?;
            client.execute(sql::PRUNE_ROLLUP, &[&before.div_euclid(3_600_000)]).await.map_err(failed)?;
            client.execute(sql::PRUNE_USAGE, &[&before]).await.map_err(failed)
        })
    }

    fn append_audit(&self, entry: AuditEntry) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let client = self.connection().await?;
            let change = entry.change.to_string();
            client
                .execute(
                    &sql::insert_audit(),
                    &[
                        &entry.id,
                        &entry.at,
                        &entry.actor_id,
                        &entry.action,
                        &entry.target,
                        &change,
                        &entry.address,
                        &entry.request_id,
                    ],
                )
                .await
                .map(drop)
                .map_err(failed)
        })
    }

    fn audit(&self, query: AuditQuery) -> BoxFuture<'_, StoreResult<Vec<AuditEntry>>> {
        Box::pin(async move {
            let client = self.connection().await?;
            let (text, values) = sql::audit(&query);
            let parameters = bind(values);
            let rows = client.query(&text, &references(&parameters)).await.map_err(failed)?;
            rows.iter()
                .map(|row| {
                    let entry = AuditEntry {
                        id: row.get(0),
                        at: row.get(1),
                        actor_id: row.get(2),
                        action: row.get(3),
                        target: row.get(4),
                        change: serde_json::Value::Null,
                        address: row.get(6),
                        request_id: row.get(7),
                    };
                    parse_change((entry, row.get(5)))
                })
                .collect()
        })
    }

    fn quotas(&self) -> BoxFuture<'_, StoreResult<Vec<(QuotaScope, String, QuotaLimits)>>> {
        Box::pin(async move {
            let client = self.connection().await?;
            let rows = client.query(sql::QUOTAS, &[]).await.map_err(failed)?;
            rows.iter().map(|row| parse_quota(row.get(0), row.get(1), row.get(2))).collect()
        })
    }

    fn set_quota(
        &self,
        scope: QuotaScope,
        subject: String,
        limits: Option<QuotaLimits>,
        at: i64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let client = self.connection().await?;
            match limits {
                Some(limits) => {
                    let text = serde_json::to_string(&limits)
                        .map_err(|error| StoreError::Corrupt(error.to_string()))?;
                    client.execute(sql::UPSERT_QUOTA, &[&scope.as_str(), &subject, &text, &at]).await
                }
                None => client.execute(sql::DELETE_QUOTA, &[&scope.as_str(), &subject]).await,
            }
            .map(drop)
            .map_err(failed)
        })
    }
}
