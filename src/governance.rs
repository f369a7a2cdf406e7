//! Wiring of governance: the usage ledger's writer and the quotas on the
//! identity store (and Redis for the quota counters when configured), and
//! the audit entry of a configuration reload the server applied itself.

use std::sync::Arc;
use std::time::Duration;

use blaze_actors::usage::{audit_stamp, AuditEntry, GovernanceStore, Ledger, QuotaOptions, Quotas};
use blaze_actors::RedisError;
use tracing::{info, warn};

use crate::openai::Governance;
use crate::settings::Settings;

/// The usage ledger's writer and the quotas, on the identity store (and
/// Redis for the quota counters when configured).
pub async fn start(
    settings: &Settings,
    store: Arc<dyn GovernanceStore>,
) -> Result<Arc<Governance>, RedisError> {
    let quota_settings = &settings.quotas;
    let options = QuotaOptions {
        default_key: quota_settings.defaults.key,
        default_user: quota_settings.defaults.user,
        default_team: quota_settings.defaults.team,
        prices: quota_settings.prices.clone().into_iter().collect(),
        currency: quota_settings.currency.clone(),
        redis_url: settings.quota_redis_url(),
        redis_timeout: Duration::from_millis(quota_settings.redis_timeout_ms),
    };
    let quotas = Quotas::new(options, store.clone())?;
    if let Err(error) = quotas.reload().await {
        warn!(%error, "cannot read the quotas set; retried every few seconds");
    }
    quotas.clone().keep_fresh(QUOTA_RELOAD);
    let ledger =
        settings.usage.enabled.then(|| Ledger::start(store.clone(), settings.usage.ledger_options()));
    info!(
        ledger = settings.usage.enabled,
        quotas = quotas.backend_name(),
        flush_interval_ms = settings.usage.flush_interval_ms,
        "usage and quotas"
    );
    Ok(Arc::new(Governance { ledger, quotas, store, currency: quota_settings.currency.clone() }))
}

/// Audits a configuration reload the server applied by itself (no actor).
pub fn audit_reload(governance: &Governance) -> Arc<dyn Fn(usize) + Send + Sync> {
    let store = governance.store.clone();
    Arc::new(move |patterns| {
        let (at, id) = audit_stamp();
        let entry = AuditEntry {
            id,
            at,
            actor_id: None,
            action: "config.reloaded".to_owned(),
            target: "config:guard".to_owned(),
            change: serde_json::json!({ "before": null, "after": { "guard_patterns": patterns } }),
            address: None,
            request_id: None,
        };
        let store = store.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "one append off the reload; its log line stands if it is lost"
        )]
        tokio::spawn(async move { crate::http::audit::append(store.as_ref(), entry).await });
    })
}

/// How soon a quota an admin set on another replica applies here.
const QUOTA_RELOAD: Duration = Duration::from_secs(2);
