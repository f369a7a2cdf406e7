//! Sign-in with an identity provider: access tokens an OIDC provider
//! issued, verified against its JSON Web Key Set, fetched from a URL (kept
//! for `refresh_interval`, fetched again early when a token names a key id
//! it does not hold, at most once per `min_refetch_interval`, so a provider
//! that rotates its keys is followed and a flood of made-up key ids costs
//! one fetch) or read from a file.
//!
//! Only asymmetric keys are taken from a key set (RSA, EC, Ed25519); a
//! symmetric (`oct`) key is ignored and an HS* header refused, so a public
//! key can never be used as an HMAC secret. Each key is bound to one
//! algorithm (its `alg`, else its type's default), the header must name
//! exactly that one, and `iss`, `aud`, `exp` and `sub` are required.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::authenticator::Failure;
use super::jwt::MAX_TOKEN_LEN;

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    Url(String),
    File(PathBuf),
}

/// The algorithms a provider's keys may use: never an HMAC one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl ProviderAlgorithm {
    fn algorithm(self) -> Algorithm {
        match self {
            ProviderAlgorithm::RS256 => Algorithm::RS256,
            ProviderAlgorithm::RS384 => Algorithm::RS384,
            ProviderAlgorithm::RS512 => Algorithm::RS512,
            ProviderAlgorithm::PS256 => Algorithm::PS256,
            ProviderAlgorithm::PS384 => Algorithm::PS384,
            ProviderAlgorithm::PS512 => Algorithm::PS512,
            ProviderAlgorithm::ES256 => Algorithm::ES256,
            ProviderAlgorithm::ES384 => Algorithm::ES384,
            ProviderAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }
}

/// Which claims name a user's email, name, roles, team and scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimMapping {
    pub email: String,
    pub name: String,
    /// A string or a list of strings.
    pub roles: String,
    /// Role values that make the user an admin.
    pub admin_roles: Vec<String>,
    /// Empty: the provider does not set teams.
    pub team: String,
    /// Space-separated (OAuth's `scope`) or a list; empty or absent: the
    /// configured default.
    pub scopes: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            email: "email".to_owned(),
            name: "name".to_owned(),
            roles: "roles".to_owned(),
            admin_roles: Vec::new(),
            team: String::new(),
            scopes: String::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    pub algorithms: Vec<ProviderAlgorithm>,
    pub refresh_interval: Duration,
    pub min_refetch_interval: Duration,
    pub leeway_s: u64,
    pub claims: ClaimMapping,
    /// Create a Blaze user the first time a subject signs in.
    pub create_users: bool,
    pub default_scopes: Vec<String>,
}

/// Who a verified token names, as the claims mapping reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    /// `issuer|subject`: unique across providers.
    pub external_id: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub admin: bool,
    pub team: Option<String>,
    pub scopes: Vec<String>,
    pub expires_at: i64,
    /// The key that signed the token.
    pub kid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the key set {source_name}: {problem}")]
    KeySet { source_name: String, problem: String },
}

struct Keys {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    fetched_at: Option<Instant>,
    /// The last fetch tried, done or failed.
    tried_at: Option<Instant>,
}

pub struct Provider {
    config: ProviderConfig,
    keys: RwLock<Keys>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    http: reqwest::Client,
}

/// The algorithm a key is for: its own `alg`, else its type's default.
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(declared) = jwk.common.key_algorithm {
        return match declared {
            KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            KeyAlgorithm::RS384 => Some(Algorithm::RS384),
            KeyAlgorithm::RS512 => Some(Algorithm::RS512),
            KeyAlgorithm::PS256 => Some(Algorithm::PS256),
            KeyAlgorithm::PS384 => Some(Algorithm::PS384),
            KeyAlgorithm::PS512 => Some(Algorithm::PS512),
            KeyAlgorithm::ES256 => Some(Algorithm::ES256),
            KeyAlgorithm::ES384 => Some(Algorithm::ES384),
            KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
            _ => None,
        };
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

impl Provider {
    /// The provider, its key set read (a file) or fetched (a URL). A URL
    /// that does not answer yet is not fatal: it is fetched again when a
    /// token needs it.
    pub async fn load(config: ProviderConfig) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(|error| {
            ProviderError::KeySet { source_name: "client".to_owned(), problem: error.to_string() }
        })?;
        let provider = Self {
            config,
            keys: RwLock::new(Keys { by_kid: HashMap::new(), fetched_at: None, tried_at: None }),
            fetching: tokio::sync::Mutex::new(()),
            http,
        };
        match (provider.fetch().await, &provider.config.jwks) {
            (Ok(()), _) => {}
            (Err(error), JwksSource::File(_)) => return Err(error),
            (Err(error), JwksSource::Url(_)) => {
                tracing::warn!(%error, "identity provider keys not fetched yet")
            }
        }
        Ok(provider)
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    fn source_name(&self) -> String {
        match &self.config.jwks {
            JwksSource::Url(url) => url.clone(),
            JwksSource::File(path) => path.display().to_string(),
        }
    }

    async fn read_set(&self) -> Result<JwkSet, ProviderError> {
        let failed = |problem: String| ProviderError::KeySet { source_name: self.source_name(), problem };
        let text = match &self.config.jwks {
            JwksSource::File(path) => {
                tokio::fs::read_to_string(path).await.map_err(|error| failed(error.to_string()))?
            }
            JwksSource::Url(url) => {
                let response = self.http.get(url).send().await.map_err(|error| failed(error.to_string()))?;
                if !response.status().is_success() {
                    return Err(failed(format!("answered {}", response.status())));
                }
                response.text().await.map_err(|error| failed(error.to_string()))?
            }
        };
        serde_json::from_str(&text).map_err(|error| failed(format!("not a JSON Web Key Set: {error}")))
    }

    /// Reads the key set again and replaces the keys held.
    async fn fetch(&self) -> Result<(), ProviderError> {
        self.keys.write().tried_at = Some(Instant::now());
        let set = self.read_set().await;
        let set = match set {
            Ok(set) => set,
            Err(error) => {
                metrics::counter!("blaze_oidc_key_fetches_total", "result" => "failed").increment(1);
                return Err(error);
            }
        };
        let allowed: Vec<Algorithm> =
            self.config.algorithms.iter().map(|algorithm| algorithm.algorithm()).collect();
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            let Some(algorithm) = key_algorithm(jwk).filter(|algorithm| allowed.contains(algorithm)) else {
                tracing::debug!(kid, "identity provider key skipped: not an allowed asymmetric algorithm");
                continue;
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) if key.family() != AlgorithmFamily::Hmac => {
                    by_kid.insert(kid, (key, algorithm));
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(kid, %error, "identity provider key skipped"),
            }
        }
        metrics::counter!("blaze_oidc_key_fetches_total", "result" => "ok").increment(1);
        tracing::info!(keys = by_kid.len(), source = self.source_name(), "identity provider keys loaded");
        let mut keys = self.keys.write();
        keys.by_kid = by_kid;
        keys.fetched_at = Some(Instant::now());
        Ok(())
    }

    /// The key of `kid`, fetching the set again when it is stale or does
    /// not hold the kid (at most once per `min_refetch_interval`).
    async fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        let (held, stale, may_fetch) = {
            let keys = self.keys.read();
            let stale = keys.fetched_at.is_none_or(|at| at.elapsed() > self.config.refresh_interval);
            let may_fetch = keys.tried_at.is_none_or(|at| at.elapsed() > self.config.min_refetch_interval);
            (keys.by_kid.get(kid).cloned(), stale, may_fetch)
        };
        if held.is_some() && !stale {
            return held;
        }
        if may_fetch {
            let _one_at_a_time = self.fetching.lock().await;
            // Another caller may have fetched while this one waited.
            let fetched_meanwhile =
                self.keys.read().tried_at.is_some_and(|at| at.elapsed() <= self.config.min_refetch_interval);
            if !fetched_meanwhile {
                if let Err(error) = self.fetch().await {
                    tracing::warn!(%error, "identity provider keys not fetched; the keys held stay");
                }
            }
        }
        self.keys.read().by_kid.get(kid).cloned()
    }

    /// Whether `token` claims to come from this provider (its `iss`, read
    /// unverified to route it; [`Provider::verify`] checks it).
    pub fn issued(&self, token: &str) -> bool {
        if token.len() > MAX_TOKEN_LEN {
            return false;
        }
        jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token).is_ok_and(|claims| {
            claims.get("iss").and_then(Value::as_str) == Some(self.config.issuer.as_str())
        })
    }

    /// The identity a token names, once its signature, algorithm, issuer,
    /// audience and times are checked.
    pub async fn verify(&self, token: &str) -> Result<ExternalIdentity, Failure> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Failure::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Failure::Malformed)?;
        if header.alg.family() == AlgorithmFamily::Hmac {
            return Err(Failure::Invalid);
        }
        let kid = header.kid.ok_or(Failure::Invalid)?;
        let (key, algorithm) = self.key(&kid).await.ok_or(Failure::Invalid)?;
        if header.alg != algorithm {
            return Err(Failure::Invalid);
        }
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway_s;
        let claims =
            jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Failure::Expired,
                _ => Failure::Invalid,
            })?;
        self.identity(&claims.claims, kid)
    }

    /// Whether the key set still holds `kid` (a token verified before is
    /// refused once the provider dropped its key).
    pub fn holds(&self, kid: &str) -> bool {
        self.keys.read().by_kid.contains_key(kid)
    }

    /// Whether a verified token with this `exp` is still in time.
    pub fn in_time(&self, expires_at: i64) -> bool {
        let leeway = i64::try_from(self.config.leeway_s).unwrap_or(i64::MAX);
        crate::auth::now_ms() / 1000 <= expires_at.saturating_add(leeway)
    }

    fn identity(&self, claims: &Value, kid: String) -> Result<ExternalIdentity, Failure> {
        let mapping = &self.config.claims;
        let text = |name: &str| {
            (!name.is_empty()).then(|| claims.get(name).and_then(Value::as_str)).flatten().map(str::to_owned)
        };
        let list = |name: &str| -> Option<Vec<String>> {
            if name.is_empty() {
                return None;
            }
            match claims.get(name)? {
                Value::String(text) => Some(text.split_whitespace().map(str::to_owned).collect()),
                Value::Array(items) => {
                    Some(items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                }
                _ => None,
            }
        };
        let subject = text("sub")
            .filter(|subject| !subject.is_empty() && subject.len() <= 255)
            .ok_or(Failure::Invalid)?;
        let roles = list(&mapping.roles).unwrap_or_default();
        let admin = roles.iter().any(|role| mapping.admin_roles.contains(role));
        let team = text(&mapping.team).filter(|team| {
            (1..=64).contains(&team.len())
                && team.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte))
        });
        let scopes = list(&mapping.scopes)
            .map(|scopes| {
                scopes
                    .into_iter()
                    .filter(|scope| super::scopes::SCOPES.contains(&scope.as_str()))
                    .collect::<Vec<_>>()
            })
            .filter(|scopes| !scopes.is_empty())
            .unwrap_or_else(|| self.config.default_scopes.clone());
        Ok(ExternalIdentity {
            external_id: format!("{}|{subject}", self.config.issuer),
            subject,
            email: text(&mapping.email).map(|email| email.trim().to_lowercase()),
            email_verified: claims.get("email_verified").and_then(Value::as_bool).unwrap_or(false),
            name: text(&mapping.name),
            admin,
            team,
            scopes,
            expires_at: claims.get("exp").and_then(Value::as_i64).unwrap_or(0),
            kid,
        })
    }
}
