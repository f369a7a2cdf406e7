//! The governance SQL both backends run (`$1` placeholders, rewritten for
//! SQLite), and the reports' and listings' statements built from a query:
//! only fixed column names are spliced in; every value is a parameter.

use super::{AuditQuery, Dimension, Subject, UsageQuery, MAX_REPORT_ROWS};

pub const USAGE_COLUMNS: &str = "at, request_id, key_id, key_lineage, user_id, team, model, endpoint, \
     prompt_tokens, completion_tokens, cached_tokens, cache, status, latency_ms, first_token_ms, cost_micros";

pub const PRUNE_USAGE: &str = "DELETE FROM usage_records WHERE at < $1";

pub const AUDIT_COLUMNS: &str = "id, at, actor_id, action, target, change, address, request_id";

pub fn insert_audit() -> String {
    format!("INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
}

pub const QUOTAS: &str = "SELECT scope, subject, limits FROM quotas ORDER BY scope, subject";
pub const UPSERT_QUOTA: &str =
    "INSERT INTO quotas (scope, subject, limits, updated_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (scope, subject) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at";
pub const DELETE_QUOTA: &str = "DELETE FROM quotas WHERE scope = $1 AND subject = $2";

/// A statement's parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Text(String),
}

fn column(dimension: Dimension) -> &'static str {
    match dimension {
        Dimension::Day => "CAST(at / 86400000 AS TEXT)",
        Dimension::Model => "model",
        Dimension::Key => "key_id",
        Dimension::User => "user_id",
        Dimension::Team => "team",
        Dimension::Endpoint => "endpoint",
    }
}

/// Appends `AND <column> = $n` with its value.
fn filter(sql: &mut String, values: &mut Vec<Value>, column: &str, value: Option<&String>) {
    if let Some(value) = value {
        values.push(Value::Text(value.clone()));
        sql.push_str(&format!(" AND {column} = ${}", values.len()));
    }
}

/// A usage report: its groups' values (as text), then count, errors and
/// sums, at most one row more than [`MAX_REPORT_ROWS`] (so a caller can
/// tell it was cut).
pub fn usage_report(query: &UsageQuery) -> (String, Vec<Value>) {
    let groups: Vec<&str> = query.group_by.iter().map(|dimension| column(*dimension)).collect();
    let mut sql = String::from("SELECT ");
    for group in &groups {
        sql.push_str(group);
        sql.push_str(", ");
    }
    sql.push_str(
        "COUNT(*), \
         COALESCE(CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT), 0), \
         COALESCE(CAST(SUM(prompt_tokens) AS BIGINT), 0), \
         COALESCE(CAST(SUM(completion_tokens) AS BIGINT), 0), \
         COALESCE(CAST(SUM(cached_tokens) AS BIGINT), 0), \
         COALESCE(CAST(SUM(cost_micros) AS BIGINT), 0) \
         FROM usage_records WHERE at >= $1 AND at < $2",
    );
    let mut values = vec![Value::Int(query.start), Value::Int(query.end)];
    filter(&mut sql, &mut values, "user_id", query.user_id.as_ref());
    filter(&mut sql, &mut values, "key_id", query.key_id.as_ref());
    filter(&mut sql, &mut values, "team", query.team.as_ref());
    filter(&mut sql, &mut values, "model", query.model.as_ref());
    if !groups.is_empty() {
        let list = groups.join(", ");
        sql.push_str(&format!(" GROUP BY {list} ORDER BY {list}"));
    }
    sql.push_str(&format!(" LIMIT {}", MAX_REPORT_ROWS + 1));
    (sql, values)
}

/// What a subject spent from a time on: requests (a refused one, 429, never
/// reserved anything), tokens, cost.
pub fn spent(subject: &Subject, since: i64) -> (String, Vec<Value>) {
    let (column, value) = match subject {
        Subject::Key(lineage) => ("key_lineage", lineage),
        Subject::User(user) => ("user_id", user),
        Subject::Team(team) => ("team", team),
    };
    let sql = format!(
        "SELECT COUNT(*), COALESCE(CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT), 0), \
         COALESCE(CAST(SUM(cost_micros) AS BIGINT), 0) FROM usage_records \
         WHERE {column} = $1 AND at >= $2 AND status <> 429"
    );
    (sql, vec![Value::Text(value.clone()), Value::Int(since)])
}

/// An audit listing, oldest first after the cursor.
pub fn audit(query: &AuditQuery) -> (String, Vec<Value>) {
    let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1");
    let mut values = Vec::new();
    let bound = |sql: &mut String, values: &mut Vec<Value>, condition: &str, value: Value| {
        values.push(value);
        sql.push_str(&format!(" AND {condition} ${}", values.len()));
    };
    if let Some(after) = &query.after {
        bound(&mut sql, &mut values, "id >", Value::Text(after.clone()));
    }
    if let Some(start) = query.start {
        bound(&mut sql, &mut values, "at >=", Value::Int(start));
    }
    if let Some(end) = query.end {
        bound(&mut sql, &mut values, "at <", Value::Int(end));
    }
    for (column, value) in
        [("actor_id =", &query.actor_id), ("action =", &query.action), ("target =", &query.target)]
    {
        if let Some(value) = value {
            bound(&mut sql, &mut values, column, Value::Text(value.clone()));
        }
    }
    sql.push_str(&format!(" ORDER BY id LIMIT {}", query.limit.clamp(1, 1000)));
    (sql, values)
}
