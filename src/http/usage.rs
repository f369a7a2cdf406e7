//! Usage reports from the ledger: `GET /v1/usage` (a caller's own, by day,
//! model or key) and `GET /admin/usage` (everyone's, also by user, team
//! and endpoint), as JSON or CSV; and `GET /admin/audit`, the audit log
//! with filters, oldest first, paged by id.

use actix_web::http::header::{ContentDisposition, DispositionParam, DispositionType, CONTENT_TYPE};
use actix_web::{web, HttpResponse};
use blaze_actors::auth::now_ms;
use blaze_actors::usage::{
    day_label, parse_day, AuditQuery, Dimension, UsageQuery, UsageRow, MAX_REPORT_ROWS,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::{AdminCaller, Caller};
use super::routing::{resource, Route};
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::settings::BodyLimitSettings;

pub fn configure(config: &mut web::ServiceConfig, limits: &BodyLimitSettings) {
    config
        .service(resource(Route::Usage, limits).route(web::get().to(own_usage)))
        .service(resource(Route::AdminUsage, limits).route(web::get().to(all_usage)))
        .service(resource(Route::Audit, limits).route(web::get().to(audit)));
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageParams {
    start: Option<String>,
    end: Option<String>,
    group_by: Option<String>,
    format: Option<String>,
    user_id: Option<String>,
    team: Option<String>,
    key_id: Option<String>,
    model: Option<String>,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidQuery, message).with_param(param)
}

/// A time as Unix seconds or a `YYYY-MM-DD` day (its UTC midnight), in
/// milliseconds.
fn instant(param: &str, text: &str) -> Result<i64, ApiError> {
    let parsed = if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        text.parse::<i64>().ok().filter(|seconds| *seconds < 100_000_000_000).map(|seconds| seconds * 1000)
    } else {
        parse_day(text)
    };
    parsed.ok_or_else(|| invalid(param, format!("`{param}` is Unix seconds or a YYYY-MM-DD day")))
}

const DAY_MS: i64 = 86_400_000;

/// The report's bounds: `[start, end)`, by default the last 30 days.
fn bounds(params: &UsageParams) -> Result<(i64, i64), ApiError> {
    let end = params.end.as_deref().map(|text| instant("end", text)).transpose()?.unwrap_or(now_ms() + 1);
    let start =
        params.start.as_deref().map(|text| instant("start", text)).transpose()?.unwrap_or(end - 30 * DAY_MS);
    if start >= end {
        return Err(invalid("start", "`start` must be before `end`"));
    }
    Ok((start, end))
}

fn group_by(params: &UsageParams, allowed: &[Dimension]) -> Result<Vec<Dimension>, ApiError> {
    let Some(text) = params.group_by.as_deref() else { return Ok(vec![Dimension::Day]) };
    let names = || allowed.iter().map(|dimension| dimension.name()).collect::<Vec<_>>().join(", ");
    let mut dimensions = Vec::new();
    for name in text.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        match Dimension::parse(name).filter(|dimension| allowed.contains(dimension)) {
            Some(dimension) if !dimensions.contains(&dimension) => dimensions.push(dimension),
            Some(_) => return Err(invalid("group_by", format!("`group_by` names `{name}` twice"))),
            None => return Err(invalid("group_by", format!("`group_by` is a list of {}", names()))),
        }
    }
    Ok(dimensions)
}

enum Format {
    Json,
    Csv,
}

fn format(params: &UsageParams) -> Result<Format, ApiError> {
    match params.format.as_deref() {
        None | Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv),
        Some(_) => Err(invalid("format", "`format` is json or csv")),
    }
}

/// `GET /v1/usage`: the caller's own usage (every key of theirs).
async fn own_usage(
    state: web::Data<AppState>,
    caller: Caller,
    params: web::Query<UsageParams>,
) -> Result<HttpResponse, ApiError> {
    let params = params.into_inner();
    for (name, given) in [("user_id", params.user_id.is_some()), ("team", params.team.is_some())] {
        if given {
            return Err(invalid(
                name,
                format!("`{name}` filters /admin/usage; /v1/usage is the caller's own"),
            ));
        }
    }
    let allowed = [Dimension::Day, Dimension::Model, Dimension::Key];
    let (start, end) = bounds(&params)?;
    let query = UsageQuery {
        start,
        end,
        group_by: group_by(&params, &allowed)?,
        user_id: Some(caller.0.user_id.clone()),
        key_id: params.key_id.clone(),
        team: None,
        model: params.model.clone(),
    };
    report(&state, query, format(&params)?).await
}

/// `GET /admin/usage`: everyone's usage.
async fn all_usage(
    state: web::Data<AppState>,
    _admin: AdminCaller,
    params: web::Query<UsageParams>,
) -> Result<HttpResponse, ApiError> {
    let params = params.into_inner();
    let allowed = [
        Dimension::Day,
        Dimension::Model,
        Dimension::Key,
        Dimension::User,
        Dimension::Team,
        Dimension::Endpoint,
    ];
    let (start, end) = bounds(&params)?;
    let query = UsageQuery {
        start,
        end,
        group_by: group_by(&params, &allowed)?,
        user_id: params.user_id.clone(),
        key_id: params.key_id.clone(),
        team: params.team.clone(),
        model: params.model.clone(),
    };
    report(&state, query, format(&params)?).await
}

fn store_failed(error: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(%error, "the usage ledger could not be read");
    ApiError::unavailable("The usage ledger cannot be read right now; retry shortly")
}

async fn report(state: &AppState, query: UsageQuery, format: Format) -> Result<HttpResponse, ApiError> {
    let governance = &state.pipeline.governance;
    let rows = governance.store.usage_report(query.clone()).await.map_err(|error| store_failed(&error))?;
    if rows.len() > MAX_REPORT_ROWS {
        return Err(invalid(
            "group_by",
            format!(
                "The report has more than {MAX_REPORT_ROWS} groups; narrow `start`..`end` or group by less"
            ),
        ));
    }
    let names: Vec<&str> = query.group_by.iter().map(|dimension| dimension.name()).collect();
    let cells = |row: &UsageRow| -> Vec<(String, Value)> {
        let mut cells: Vec<(String, Value)> = names
            .iter()
            .zip(&query.group_by)
            .zip(&row.group)
            .map(|((name, dimension), value)| {
                let value = match (dimension, value) {
                    (Dimension::Day, Some(day)) => {
                        day.parse().map_or(Value::Null, |day| Value::from(day_label(day)))
                    }
                    (_, value) => value.clone().map_or(Value::Null, Value::from),
                };
                ((*name).to_owned(), value)
            })
            .collect();
        cells.extend([
            ("requests".to_owned(), Value::from(row.requests)),
            ("errors".to_owned(), Value::from(row.errors)),
            ("prompt_tokens".to_owned(), Value::from(row.prompt_tokens)),
            ("completion_tokens".to_owned(), Value::from(row.completion_tokens)),
            ("total_tokens".to_owned(), Value::from(row.prompt_tokens + row.completion_tokens)),
            ("cached_tokens".to_owned(), Value::from(row.cached_tokens)),
            ("cost".to_owned(), Value::from(row.cost_micros as f64 / 1_000_000.0)),
        ]);
        cells
    };
    match format {
        Format::Json => {
            let data: Vec<Value> =
                rows.iter().map(|row| Value::Object(cells(row).into_iter().collect::<Map<_, _>>())).collect();
            Ok(HttpResponse::Ok().json(json!({
                "object": "usage.report",
                "start": query.start / 1000,
                "end": query.end / 1000,
                "group_by": names,
                "currency": governance.currency,
                "data": data,
            })))
        }
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            let mut header: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
            header.extend(
                [
                    "requests",
                    "errors",
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                    "cached_tokens",
                    "cost",
                ]
                .map(str::to_owned),
            );
            let failed = |error: csv::Error| ApiError::internal_failure("writing CSV", &error);
            writer.write_record(&header).map_err(failed)?;
            for row in &rows {
                let record = cells(row).into_iter().map(|(_, value)| csv_cell(&value));
                writer.write_record(record).map_err(failed)?;
            }
            let body =
                writer.into_inner().map_err(|error| ApiError::internal_failure("writing CSV", &error))?;
            Ok(HttpResponse::Ok()
                .insert_header((CONTENT_TYPE, "text/csv; charset=utf-8"))
                .insert_header(ContentDisposition {
                    disposition: DispositionType::Attachment,
                    parameters: vec![DispositionParam::Filename("usage.csv".to_owned())],
                })
                .body(body))
        }
    }
}

/// A cell as text; one a spreadsheet would read as a formula is quoted
/// with a leading apostrophe (CSV injection).
fn csv_cell(value: &Value) -> String {
    let text = match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match text.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') if !matches!(value, Value::Number(_)) => {
            format!("'{text}")
        }
        _ => text,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    start: Option<String>,
    end: Option<String>,
    actor_id: Option<String>,
    action: Option<String>,
    target: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

/// `GET /admin/audit`.
async fn audit(
    state: web::Data<AppState>,
    _admin: AdminCaller,
    params: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    let params = params.into_inner();
    let limit = match params.limit.unwrap_or(100) {
        limit @ 1..=1000 => limit,
        _ => return Err(invalid("limit", "`limit` must be 1 to 1000")),
    };
    let query = AuditQuery {
        start: params.start.as_deref().map(|text| instant("start", text)).transpose()?,
        end: params.end.as_deref().map(|text| instant("end", text)).transpose()?,
        actor_id: params.actor_id,
        action: params.action,
        target: params.target,
        after: params.after,
        limit: limit + 1,
    };
    let mut entries =
        state.pipeline.governance.store.audit(query).await.map_err(|error| store_failed(&error))?;
    let has_more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let data: Vec<Value> = entries
        .iter()
        .map(|entry| {
            json!({
                "object": "audit.entry",
                "id": entry.id,
                "at": entry.at / 1000,
                "at_ms": entry.at,
                "actor_id": entry.actor_id,
                "action": entry.action,
                "target": entry.target,
                "change": entry.change,
                "address": entry.address,
                "request_id": entry.request_id,
            })
        })
        .collect();
    let last = entries.last().map(|entry| entry.id.clone());
    Ok(HttpResponse::Ok()
        .json(json!({ "object": "list", "data": data, "has_more": has_more, "last_id": last })))
}
