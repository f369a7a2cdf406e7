//! The audit log's entries, written by the handlers that change access,
//! quotas, the cache or the models: who acted (the caller), on what, the
//! change as before and after (never a secret: key secrets and password
//! hashes are not in the JSON the handlers show), from which address,
//! under which request id. Each entry is appended to the store before the
//! handler answers, and also written as a `blaze::audit` log line, so a
//! store that failed still leaves the line.

use actix_web::{HttpMessage, HttpRequest};
use blaze_actors::auth::Principal;
use blaze_actors::usage::{audit_stamp, AuditEntry, GovernanceStore};
use serde_json::{json, Value};

use super::auth::client_address;
use super::AppState;
use crate::openai::RequestId;

/// One change to record.
pub struct Change<'a> {
    pub action: &'static str,
    pub target: String,
    pub before: Value,
    pub after: Value,
    pub actor: Option<&'a Principal>,
}

/// Appends the entry and writes its log line.
pub async fn record(state: &AppState, request: &HttpRequest, change: Change<'_>) {
    let (at, id) = audit_stamp();
    let entry = AuditEntry {
        id,
        at,
        actor_id: change.actor.map(|actor| actor.user_id.clone()),
        action: change.action.to_owned(),
        target: change.target,
        change: json!({ "before": change.before, "after": change.after }),
        address: client_address(request).map(|address| address.to_string()),
        request_id: request.extensions().get::<RequestId>().map(|id| id.as_str().to_owned()),
    };
    append(state.pipeline.governance.store.as_ref(), entry).await;
}

/// Writes an entry's log line, then appends it to the store (a failure
/// is counted and logged: the line stands).
pub async fn append(store: &dyn GovernanceStore, entry: AuditEntry) {
    tracing::info!(
        target: "blaze::audit",
        audit_id = entry.id.as_str(),
        action = entry.action.as_str(),
        actor_id = entry.actor_id.as_deref().unwrap_or(""),
        target_id = entry.target.as_str(),
        address = entry.address.as_deref().unwrap_or(""),
        request_id = entry.request_id.as_deref().unwrap_or(""),
        change = %entry.change,
        "audit"
    );
    if let Err(error) = store.append_audit(entry).await {
        metrics::counter!("blaze_audit_write_failures_total").increment(1);
        tracing::error!(%error, "the audit entry could not be stored (its log line stands)");
    }
}
