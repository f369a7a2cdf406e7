//! The governance SQL both backends run (`$1` placeholders, rewritten for
//! SQLite), and the reports' and listings' statements built from a query:
//! only fixed column names are spliced in; every value is a parameter.

use super::{AuditQuery, Dimension, Subject, UsageQuery, MAX_REPORT_ROWS};

pub const USAGE_COLUMNS: &str = "at, request_id, key_id, key_lineage, user_id, team, model, endpoint, \
     prompt_tokens, completion_tokens, cached_tokens, cache, status, latency_ms, first_token_ms, cost_micros";

pub const PRUNE_USAGE: &str = "DELETE FROM usage_records WHERE at < $1";
pub const PRUNE_ROLLUP: &str = "DELETE FROM usage_rollup WHERE hour < $1";

/// What a group already in the rollup gets: the new sums added.
pub const ROLLUP_ON_CONFLICT: &str =
    "ON CONFLICT (hour, user_id, key_id, key_lineage, team, model, endpoint) \
     DO UPDATE SET requests = usage_rollup.requests + excluded.requests, \
     errors = usage_rollup.errors + excluded.errors, refused = usage_rollup.refused + excluded.refused, \
     prompt_tokens = usage_rollup.prompt_tokens + excluded.prompt_tokens, \
     completion_tokens = usage_rollup.completion_tokens + excluded.completion_tokens, \
     cached_tokens = usage_rollup.cached_tokens + excluded.cached_tokens, \
     cost_micros = usage_rollup.cost_micros + excluded.cost_micros";

pub const ROLLUP_COLUMNS: &str =
    "hour, user_id, key_id, key_lineage, team, model, endpoint, requests, errors, \
     refused, prompt_tokens, completion_tokens, cached_tokens, cost_micros";

/// Adds one group's sums to its hour's row.
pub fn upsert_rollup() -> String {
    format!(
        "INSERT INTO usage_rollup ({ROLLUP_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) {ROLLUP_ON_CONFLICT}"
    )
}

const HOUR_MS: i64 = 3_600_000;

/// One hour's sums of one caller, model and endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums {
    pub requests: i64,
    pub errors: i64,
    /// Requests refused with 429: they reserved nothing.
    pub refused: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub cost_micros: i64,
}

/// (hour, user, key, lineage, team, model, endpoint); '' is "none".
pub type Group = (i64, String, String, String, String, String, String);

/// A batch's rows summed by hour and group, for the rollup.
pub fn rollup(rows: &[super::UsageRecord]) -> Vec<(Group, Sums)> {
    let mut groups: std::collections::HashMap<Group, Sums> = std::collections::HashMap::new();
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    for row in rows {
        let group = (
            row.at.div_euclid(HOUR_MS),
            row.user_id.clone(),
            text(&row.key_id),
            text(&row.key_lineage),
            text(&row.team),
            row.model.clone(),
            row.endpoint.clone(),
        );
        let sums = groups.entry(group).or_default();
        sums.requests += 1;
        sums.errors += i64::from(row.status >= 400);
        sums.refused += i64::from(row.status == 429);
        sums.prompt_tokens += stored(row.prompt_tokens);
        sums.completion_tokens += stored(row.completion_tokens);
        sums.cached_tokens += stored(row.cached_tokens);
        sums.cost_micros += stored(row.cost_micros);
    }
    groups.into_iter().collect()
}

pub const AUDIT_COLUMNS: &str = "id, at, actor_id, action, target, change, address, request_id";

pub fn insert_audit() -> String {
    format!("INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
}

pub const QUOTAS: &str = "SELECT scope, subject, limits FROM quotas ORDER BY scope, subject";
pub const UPSERT_QUOTA: &str =
    "INSERT INTO quotas (scope, subject, limits, updated_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (scope, subject) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at";
pub const DELETE_QUOTA: &str = "DELETE FROM quotas WHERE scope = $1 AND subject = $2";

/// A count as stored (a BIGINT).
pub fn stored(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored count read back (never negative).
pub fn counted(value: i64) -> u64 {
    value.max(0) as u64
}

/// A statement's parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Text(String),
}

fn column(dimension: Dimension) -> &'static str {
    match dimension {
        Dimension::Day => "CAST(hour / 24 AS TEXT)",
        Dimension::Model => "model",
        Dimension::Key => "NULLIF(key_id, '')",
        Dimension::User => "user_id",
        Dimension::Team => "NULLIF(team, '')",
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

/// A usage report from the hourly rollup (whole hours: `start` rounds
/// down, `end` up): its groups' values (as text), then count, errors and
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
        "COALESCE(CAST(SUM(requests) AS BIGINT), 0), \
         COALESCE(CAST(SUM(errors) AS BIGINT), 0), \
         COALESCE(CAST(SUM(prompt_tokens) AS BIGINT), 0), \
         COALESCE(CAST(SUM(completion_tokens) AS BIGINT), 0), \
         COALESCE(CAST(SUM(cached_tokens) AS BIGINT), 0), \
         COALESCE(CAST(SUM(cost_micros) AS BIGINT), 0) \
         FROM usage_rollup WHERE hour >= $1 AND hour < $2",
    );
    let (first, past) =
        (query.start.div_euclid(HOUR_MS), query.end.saturating_add(HOUR_MS - 1).div_euclid(HOUR_MS));
    let mut values = vec![Value::Int(first), Value::Int(past)];
    filter(&mut sql, &mut values, "user_id", query.user_id.as_ref());
    filter(&mut sql, &mut values, "key_id", query.key_id.as_ref());
    filter(&mut sql, &mut values, "team", query.team.as_ref());
    filter(&mut sql, &mut values, "model", query.model.as_ref());
    if groups.is_empty() {
        // The total as one row, none when nothing matched (as with groups).
        sql.push_str(" HAVING COUNT(*) > 0");
    } else {
        let list = groups.join(", ");
        sql.push_str(&format!(" GROUP BY {list} ORDER BY {list}"));
    }
    sql.push_str(&format!(" LIMIT {}", MAX_REPORT_ROWS + 1));
    (sql, values)
}

/// What a subject spent from a time on: requests (not those refused with
/// 429: they reserved nothing), tokens, cost.
pub fn spent(subject: &Subject, since: i64) -> (String, Vec<Value>) {
    let (column, value) = match subject {
        Subject::Key(lineage) => ("key_lineage", lineage),
        Subject::User(user) => ("user_id", user),
        Subject::Team(team) => ("team", team),
    };
    // Quota windows begin on whole hours (UTC days and months).
    let sql = format!(
        "SELECT COALESCE(CAST(SUM(requests - refused) AS BIGINT), 0), \
         COALESCE(CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT), 0), \
         COALESCE(CAST(SUM(cost_micros) AS BIGINT), 0) FROM usage_rollup \
         WHERE {column} = $1 AND hour >= $2"
    );
    (sql, vec![Value::Text(value.clone()), Value::Int(since.div_euclid(HOUR_MS))])
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
