//! JSON Web Tokens: signing and verification keys by `kid`, the claims
//! Blaze issues, and the strict validation of what clients present.
//!
//! Every verification key carries its own algorithm allow-list (exactly its
//! algorithm, never `none`); the header's `kid` picks the key, so an
//! unknown kid, or a header naming another algorithm than the key's (HS256
//! signed with a public key), is refused before any signature check. `exp`,
//! `nbf`, `iss`, `aud` and `sub` are required; `typ` tells access from
//! refresh tokens.

use std::collections::HashMap;
use std::path::PathBuf;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::store::Role;

/// The longest token examined; anything longer is refused unread.
pub const MAX_TOKEN_LEN: usize = 8192;
/// The shortest HS256 secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    EdDSA,
    RS256,
}

impl JwtAlgorithm {
    fn algorithm(self) -> Algorithm {
        match self {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::EdDSA => Algorithm::EdDSA,
            JwtAlgorithm::RS256 => Algorithm::RS256,
        }
    }
}

/// One signing or verification key, from config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeySpec {
    /// The key id written in the header of the tokens it signs.
    pub kid: String,
    pub algorithm: JwtAlgorithm,
    /// HS256: a file holding the secret (at least 32 bytes).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// EdDSA and RS256: the private key (PEM); without it the key only
    /// verifies (a retired key kept so its tokens stay valid).
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// EdDSA and RS256: the public key (PEM).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    Access,
    Refresh,
}

/// The claims of every token Blaze issues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub scopes: Vec<String>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    pub jti: String,
    pub typ: TokenType,
    /// The sign-in (refresh family) the token belongs to.
    pub sid: String,
    /// What the sign-in was made with: `key:<id>` or `password`. Revoking
    /// that key, or changing the password, ends the sign-in.
    #[serde(default)]
    pub src: String,
    /// When the sign-in began, Unix milliseconds; kept across refreshes,
    /// so a sign-in ends `auth.jwt.session_max_s` after it.
    #[serde(default)]
    pub sat: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    Expired,
    /// Malformed, badly signed, wrong claims, unknown kid, wrong type.
    Invalid,
    WrongType,
}

struct VerifyingKey {
    key: DecodingKey,
    validation: Validation,
}

/// The loaded keys: one signs, all verify.
pub struct JwtKeys {
    signing: (String, Algorithm, EncodingKey),
    verifying: HashMap<String, VerifyingKey>,
}

/// Issuer, audience and clock leeway shared by every key.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    pub leeway_s: u64,
}

/// Why the JWT keys cannot load.
#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    #[error("no JWT key is configured and none was generated")]
    NoKey,
    #[error("the generated HS256 secret: {0}")]
    Generated(jsonwebtoken::errors::Error),
    #[error("auth.jwt.keys `{kid}`: {problem}")]
    Key { kid: String, problem: KeyProblem },
    #[error("auth.jwt.signing_kid `{0}`: no configured key with that kid can sign")]
    NoSigner(String),
}

/// What is wrong with one configured key.
#[derive(Debug, thiserror::Error)]
pub enum KeyProblem {
    #[error("HS256 needs secret_file")]
    NoSecretFile,
    #[error("needs public_key_file")]
    NoPublicKeyFile,
    #[error("the secret must be at least {MIN_SECRET_LEN} bytes")]
    ShortSecret,
    #[error("{}: {source}", path.display())]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

fn read(path: &PathBuf) -> Result<Vec<u8>, KeyProblem> {
    std::fs::read(path).map_err(|source| KeyProblem::Unreadable { path: path.clone(), source })
}

fn hs256(secret: &[u8]) -> Result<(DecodingKey, EncodingKey), jsonwebtoken::errors::Error> {
    Ok((DecodingKey::from_secret(secret)?, EncodingKey::from_secret(secret)?))
}

/// A kid derived from a secret: stable across restarts, reveals nothing.
pub fn kid_of_secret(secret: &[u8]) -> String {
    let digest = sha2::Sha256::digest(secret);
    format!("hs256-{}", hex::encode(&digest[..6]))
}

/// One configured key: its algorithm, how it verifies, and how it signs
/// where its private part is given.
fn key_of(spec: &JwtKeySpec) -> Result<(Algorithm, DecodingKey, Option<EncodingKey>), KeyProblem> {
    match spec.algorithm {
        JwtAlgorithm::HS256 => {
            let path = spec.secret_file.as_ref().ok_or(KeyProblem::NoSecretFile)?;
            let secret = read(path)?;
            let secret = secret.trim_ascii();
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeyProblem::ShortSecret);
            }
            let (decoding, encoding) = hs256(secret)?;
            Ok((Algorithm::HS256, decoding, Some(encoding)))
        }
        JwtAlgorithm::EdDSA | JwtAlgorithm::RS256 => {
            let path = spec.public_key_file.as_ref().ok_or(KeyProblem::NoPublicKeyFile)?;
            let public = read(path)?;
            let private = spec.private_key_file.as_ref().map(read).transpose()?;
            let (decoding, encoding) = if spec.algorithm == JwtAlgorithm::EdDSA {
                (
                    DecodingKey::from_ed_pem(&public)?,
                    private.map(|pem| EncodingKey::from_ed_pem(&pem)).transpose()?,
                )
            } else {
                (
                    DecodingKey::from_rsa_pem(&public)?,
                    private.map(|pem| EncodingKey::from_rsa_pem(&pem)).transpose()?,
                )
            };
            Ok((spec.algorithm.algorithm(), decoding, encoding))
        }
    }
}

impl JwtKeys {
    /// Loads the keys. `generated_secret` is the data dir's HS256 secret,
    /// used when no key is configured. The signing key is `signing_kid`, or
    /// the first key that can sign.
    pub fn load(
        specs: &[JwtKeySpec],
        signing_kid: &str,
        generated_secret: Option<Vec<u8>>,
        settings: &JwtSettings,
    ) -> Result<Self, JwtKeyError> {
        let mut verifying = HashMap::new();
        let mut signers = Vec::new();
        let mut add =
            |kid: String, algorithm: Algorithm, decoding: DecodingKey, encoding: Option<EncodingKey>| {
                let mut validation = Validation::new(algorithm);
                validation.algorithms = vec![algorithm];
                validation.set_issuer(&[&settings.issuer]);
                validation.set_audience(&[&settings.audience]);
                validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
                validation.validate_nbf = true;
                validation.validate_exp = true;
                validation.leeway = settings.leeway_s;
                if let Some(encoding) = encoding {
                    signers.push((kid.clone(), algorithm, encoding));
                }
                verifying.insert(kid, VerifyingKey { key: decoding, validation });
            };
        if specs.is_empty() {
            let secret = generated_secret.ok_or(JwtKeyError::NoKey)?;
            let (decoding, encoding) = hs256(&secret).map_err(JwtKeyError::Generated)?;
            add(kid_of_secret(&secret), Algorithm::HS256, decoding, Some(encoding));
        }
        for spec in specs {
            let (algorithm, decoding, encoding) =
                key_of(spec).map_err(|problem| JwtKeyError::Key { kid: spec.kid.clone(), problem })?;
            add(spec.kid.clone(), algorithm, decoding, encoding);
        }
        let signing = if signing_kid.is_empty() {
            signers.into_iter().next()
        } else {
            signers.into_iter().find(|(kid, ..)| kid == signing_kid)
        };
        let signing = signing.ok_or_else(|| JwtKeyError::NoSigner(signing_kid.to_owned()))?;
        Ok(Self { signing, verifying })
    }

    /// Signs claims with the signing key, its kid in the header.
    pub fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        let (kid, algorithm, key) = &self.signing;
        let mut header = Header::new(*algorithm);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, claims, key)
    }

    /// Checks a token completely and returns its claims if it is a valid
    /// token of the expected type.
    pub fn verify(&self, token: &str, expected: TokenType) -> Result<Claims, TokenProblem> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenProblem::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenProblem::Invalid)?;
        let kid = header.kid.as_deref().ok_or(TokenProblem::Invalid)?;
        let key = self.verifying.get(kid).ok_or(TokenProblem::Invalid)?;
        if !key.validation.algorithms.contains(&header.alg) {
            return Err(TokenProblem::Invalid);
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation).map_err(|error| match error
                .kind()
            {
                ErrorKind::ExpiredSignature => TokenProblem::Expired,
                _ => TokenProblem::Invalid,
            })?;
        if data.claims.typ != expected {
            return Err(TokenProblem::WrongType);
        }
        Ok(data.claims)
    }

    /// The kids that verify, for the logs at start-up.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.verifying.keys().cloned().collect();
        kids.sort();
        kids
    }

    pub fn signing_kid(&self) -> &str {
        &self.signing.0
    }
}
