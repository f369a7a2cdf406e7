//! `auth.oidc`: the identity provider whose access tokens Blaze accepts,
//! its key set, the claims that name a user's role, team and scopes.

use std::time::Duration;

use blaze_actors::auth::provider::{ClaimMapping, JwksSource, ProviderAlgorithm, ProviderConfig};
use serde::{Deserialize, Serialize};

use super::Settings;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// The provider's `iss`, exactly; empty: no provider.
    pub issuer: String,
    /// The `aud` its tokens must carry (the API's identifier there).
    pub audience: String,
    /// The key set's URL (the discovery document's `jwks_uri`), or
    pub jwks_url: String,
    /// a file holding it.
    pub jwks_file: String,
    /// Accepted signature algorithms; HS* are not among them.
    pub algorithms: Vec<ProviderAlgorithm>,
    pub refresh_interval_s: u64,
    /// An unknown `kid` fetches the key set again at most this often.
    pub min_refetch_interval_s: u64,
    pub leeway_s: u64,
    /// A subject's first sign-in creates its Blaze user.
    pub create_users: bool,
    /// The scopes of a token whose scopes claim is absent or unset.
    pub default_scopes: Vec<String>,
    pub claims: ClaimMapping,
}

impl OidcSettings {
    pub fn provider(&self) -> Option<ProviderConfig> {
        if self.issuer.is_empty() {
            return None;
        }
        let jwks = if self.jwks_url.is_empty() {
            JwksSource::File(self.jwks_file.clone().into())
        } else {
            JwksSource::Url(self.jwks_url.clone())
        };
        Some(ProviderConfig {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            jwks,
            algorithms: self.algorithms.clone(),
            refresh_interval: Duration::from_secs(self.refresh_interval_s),
            min_refetch_interval: Duration::from_secs(self.min_refetch_interval_s),
            leeway_s: self.leeway_s,
            claims: self.claims.clone(),
            create_users: self.create_users,
            default_scopes: self.default_scopes.clone(),
        })
    }
}

impl Settings {
    pub(super) fn oidc_problems(&self) -> Vec<(&'static str, String)> {
        let oidc = &self.auth.oidc;
        let mut problems = Vec::new();
        if oidc.issuer.is_empty() {
            return problems;
        }
        if oidc.audience.is_empty() {
            problems.push(("auth.oidc.audience", "must be set with auth.oidc.issuer".to_owned()));
        }
        match (oidc.jwks_url.is_empty(), oidc.jwks_file.is_empty()) {
            (true, true) | (false, false) => problems.push((
                "auth.oidc.jwks_url",
                "set exactly one of auth.oidc.jwks_url and auth.oidc.jwks_file".to_owned(),
            )),
            (false, true)
                if !(oidc.jwks_url.starts_with("https://") || oidc.jwks_url.starts_with("http://")) =>
            {
                problems.push(("auth.oidc.jwks_url", "must be an http(s) URL".to_owned()));
            }
            _ => {}
        }
        if oidc.algorithms.is_empty() {
            problems.push(("auth.oidc.algorithms", "must name at least one algorithm".to_owned()));
        }
        if !(1..=86_400).contains(&oidc.refresh_interval_s) {
            problems.push(("auth.oidc.refresh_interval_s", "must be 1 to 86400".to_owned()));
        }
        if oidc.min_refetch_interval_s > oidc.refresh_interval_s {
            problems
                .push(("auth.oidc.min_refetch_interval_s", "must be at most refresh_interval_s".to_owned()));
        }
        if oidc.leeway_s > 300 {
            problems.push(("auth.oidc.leeway_s", "must be at most 300".to_owned()));
        }
        let known = |scope: &String| blaze_actors::auth::scopes::SCOPES.contains(&scope.as_str());
        if oidc.default_scopes.is_empty() || !oidc.default_scopes.iter().all(known) {
            problems.push((
                "auth.oidc.default_scopes",
                format!("one or more of {:?}", blaze_actors::auth::scopes::SCOPES),
            ));
        }
        problems
    }
}
