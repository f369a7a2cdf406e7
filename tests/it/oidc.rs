//! Sign-in with an identity provider: access tokens the test signs with
//! RSA and Ed25519 keys it makes, their key set served by the test over
//! HTTP (or read from a file). A provider user is created on first sight
//! with the role, team and scopes its claims give; the key set is fetched
//! again when a token names a new key id (rotation), at most once per
//! interval however many unknown ids arrive; a wrong issuer or audience,
//! an expired token, an unknown key, an HS256 token made with the public
//! key as its secret, a header naming another algorithm than its key's,
//! and a disabled user are all refused.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::{client, client_with_key, expect_error, json_with_status, Server};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISSUER: &str = "https://login.example.com/tenant";
const AUDIENCE: &str = "api://blaze";

fn openssl(arguments: &[&str]) {
    let status =
        Command::new("openssl").args(arguments).status().expect("openssl runs (apt-get install openssl)");
    assert!(status.success(), "openssl {arguments:?}");
}

/// A signing key the test holds, and its public JWK under `kid`.
struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    public_pem: Vec<u8>,
}

impl SigningKey {
    fn new(directory: &Path, kid: &str, algorithm: Algorithm) -> Self {
        let private = directory.join(format!("{kid}.pem"));
        let public = directory.join(format!("{kid}.pub.pem"));
        match algorithm {
            Algorithm::EdDSA => {
                openssl(&["genpkey", "-algorithm", "ed25519", "-out", private.to_str().unwrap()])
            }
            _ => openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                private.to_str().unwrap(),
            ]),
        }
        openssl(&["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
        let pem = std::fs::read(&private).unwrap();
        let encoding = match algorithm {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        Self { kid: kid.to_owned(), algorithm, encoding, public_pem: std::fs::read(&public).unwrap() }
    }

    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.algorithm).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn key_set(keys: &[&SigningKey]) -> String {
    serde_json::to_string(&JwkSet { keys: keys.iter().map(|key| key.jwk()).collect() }).unwrap()
}

/// Claims of a valid token for `subject`, with `extra` fields.
fn claims(subject: &str, extra: Value) -> Value {
    let now = blaze_actors::auth::now_ms() / 1000;
    let mut claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 600});
    claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    claims
}

/// The key set over HTTP, as a provider serves its `jwks_uri`, counting
/// the fetches.
struct KeySetServer {
    url: String,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl KeySetServer {
    async fn start(body: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let body = Arc::new(Mutex::new(body));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (body.clone(), fetches.clone());
        tokio::spawn(async move {
            // Bounded: the test makes a handful of fetches.
            for _ in 0..1_000 {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                counted.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        Self { url, body, fetches }
    }

    fn publish(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn status_of(server: &Server, token: &str, path: &str) -> u16 {
    client_with_key(token).get(server.url(path)).send().await.unwrap().status().as_u16()
}

/// The provider's settings, as an operator writes them.
fn provider_config(jwks_url: &str) -> tempfile::NamedTempFile {
    crate::common::config_file(&format!(
        "auth:\n  oidc:\n    issuer: {ISSUER}\n    audience: {AUDIENCE}\n    jwks_url: {jwks_url}\n    \
         min_refetch_interval_s: 2\n    claims:\n      admin_roles: [blaze-admin]\n      team: team\n"
    ))
}

#[tokio::test]
async fn provider_tokens_sign_users_in_and_keys_rotate() {
    let directory = tempfile::tempdir().unwrap();
    let rsa = SigningKey::new(directory.path(), "rsa-1", Algorithm::RS256);
    let ed = SigningKey::new(directory.path(), "ed-1", Algorithm::EdDSA);
    let keys = KeySetServer::start(key_set(&[&rsa, &ed])).await;
    let config = provider_config(&keys.url);
    // The refusals below come from one address: the brute-force cool-down
    // (tested elsewhere) must not answer them first.
    let environment = [("BLAZE__SECURITY__BRUTE_FORCE__MAX_FAILURES", "1000")];
    let server = Server::start(&environment, &["--config", config.path().to_str().unwrap()]).await;
    assert_eq!(keys.fetches(), 1, "fetched once at start");

    // First sight: a user, with the claims' email, name, team and role.
    let ada = rsa.sign(&claims(
        "ada-123",
        json!({"email": "Ada@Example.com", "name": "Ada", "team": "research", "roles": ["reader"]}),
    ));
    assert_eq!(status_of(&server, &ada, "/v1/models").await, 200);
    expect_error(
        client_with_key(&ada).get(server.url("/admin/users")).send().await.unwrap(),
        403,
        "insufficient_permissions",
    )
    .await;
    let users =
        json_with_status(client().get(server.url("/admin/users?limit=100")).send().await.unwrap(), 200).await;
    let user = users["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|user| user["email"] == "ada@example.com")
        .expect("ada's user")
        .clone();
    assert_eq!(
        (user["name"].as_str(), user["team"].as_str(), user["role"].as_str()),
        (Some("Ada"), Some("research"), Some("user"))
    );
    // Her usage is hers, under that user.
    let usage =
        json_with_status(client_with_key(&ada).get(server.url("/v1/usage")).send().await.unwrap(), 200).await;
    assert_eq!(usage["object"], "usage.report");

    // EdDSA too; an admin role claim makes an admin.
    let grace = ed.sign(&claims("grace-7", json!({"email": "grace@example.com", "roles": "blaze-admin"})));
    assert_eq!(status_of(&server, &grace, "/admin/users").await, 200);

    // Refused: wrong issuer, wrong audience, expired, no sub, alg none.
    for bad in [
        rsa.sign(&claims("ada-123", json!({"iss": "https://evil.example.com/"}))),
        rsa.sign(&claims("ada-123", json!({"aud": "api://other"}))),
        rsa.sign(&claims("ada-123", json!({"exp": 1_000_000_000}))),
        rsa.sign(&json!({"iss": ISSUER, "aud": AUDIENCE, "exp": 4_102_444_800_u64})),
    ] {
        expect_error(
            client_with_key(&bad).get(server.url("/v1/models")).send().await.unwrap(),
            401,
            "invalid_api_key",
        )
        .await;
    }
    let body = URL_SAFE(&claims("ada-123", json!({})));
    let unsigned = format!("{}.{body}.", URL_SAFE(&json!({"alg": "none", "kid": "rsa-1"})));
    assert_eq!(status_of(&server, &unsigned, "/v1/models").await, 401);

    // Alg confusion: an HS256 token whose secret is the RSA public key,
    // under the RSA key's kid; and an RS256 header on the Ed25519 key's kid.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".to_owned());
    let confused = jsonwebtoken::encode(
        &header,
        &claims("ada-123", json!({})),
        &EncodingKey::from_secret(&rsa.public_pem).unwrap(),
    )
    .unwrap();
    assert_eq!(status_of(&server, &confused, "/v1/models").await, 401);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("ed-1".to_owned());
    let crossed = jsonwebtoken::encode(&header, &claims("ada-123", json!({})), &rsa.encoding).unwrap();
    assert_eq!(status_of(&server, &crossed, "/v1/models").await, 401);

    // Unknown kids: one fetch, however many arrive within the interval.
    let before = keys.fetches();
    let stranger = SigningKey::new(directory.path(), "rsa-unknown", Algorithm::RS256);
    for index in 0..20 {
        let token = stranger.sign(&claims(&format!("nobody-{index}"), json!({})));
        assert_eq!(status_of(&server, &token, "/v1/models").await, 401);
    }
    assert!(keys.fetches() - before <= 1, "{} fetches for 20 unknown kids", keys.fetches() - before);

    // Rotation: the provider publishes a new key and drops the old one; a
    // token under the new kid is accepted once the interval allows a fetch.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let rotated = SigningKey::new(directory.path(), "rsa-2", Algorithm::RS256);
    keys.publish(key_set(&[&rotated, &ed]));
    let fresh = rotated.sign(&claims("ada-123", json!({"email": "ada@example.com"})));
    assert_eq!(status_of(&server, &fresh, "/v1/models").await, 200);
    assert_eq!(status_of(&server, &ada, "/v1/models").await, 401, "the dropped key signs nothing any more");

    // A disabled user's provider tokens stop working at once.
    let id = user["id"].as_str().unwrap();
    json_with_status(client().delete(server.url(&format!("/admin/users/{id}"))).send().await.unwrap(), 200)
        .await;
    expect_error(
        client_with_key(&fresh).get(server.url("/v1/models")).send().await.unwrap(),
        401,
        "invalid_api_key",
    )
    .await;
}

#[allow(non_snake_case)]
fn URL_SAFE(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[tokio::test]
async fn a_key_set_file_and_no_user_creation() {
    let directory = tempfile::tempdir().unwrap();
    let ed = SigningKey::new(directory.path(), "ed-file", Algorithm::EdDSA);
    let file = directory.path().join("jwks.json");
    std::fs::write(&file, key_set(&[&ed])).unwrap();
    let path = file.to_str().unwrap();
    let environment = [
        ("BLAZE__AUTH__OIDC__ISSUER", ISSUER),
        ("BLAZE__AUTH__OIDC__AUDIENCE", AUDIENCE),
        ("BLAZE__AUTH__OIDC__JWKS_FILE", path),
        ("BLAZE__AUTH__OIDC__CREATE_USERS", "false"),
        ("BLAZE__AUTH__OIDC__CLAIMS__SCOPES", "scp"),
    ];
    let server = Server::start(&environment, &[]).await;
    // No user for this subject, and none is made.
    let token = ed.sign(&claims("new-person", json!({"email": "new@example.com"})));
    assert_eq!(status_of(&server, &token, "/v1/models").await, 401);
    // An existing user is linked by a verified email only.
    json_with_status(
        client()
            .post(server.url("/admin/users"))
            .json(&json!({"email": "known@example.com"}))
            .send()
            .await
            .unwrap(),
        201,
    )
    .await;
    let unverified = ed.sign(&claims("known-1", json!({"email": "known@example.com"})));
    assert_eq!(status_of(&server, &unverified, "/v1/models").await, 401);
    let verified = ed.sign(&claims(
        "known-1",
        json!({"email": "known@example.com", "email_verified": true, "scp": "embeddings"}),
    ));
    // The token's scopes hold: embeddings, not models.
    expect_error(
        client_with_key(&verified).get(server.url("/v1/models")).send().await.unwrap(),
        403,
        "insufficient_scope",
    )
    .await;
    let embedded = client_with_key(&verified)
        .post(server.url("/v1/embeddings"))
        .json(&json!({"model": "all-minilm-l6-v2", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(embedded.status(), 200);
}

#[tokio::test]
async fn provider_settings_are_checked_at_start() {
    for (name, value, problem) in [
        ("BLAZE__AUTH__OIDC__ALGORITHMS", "[HS256]", "auth.oidc.algorithms"),
        ("BLAZE__AUTH__OIDC__JWKS_FILE", "/tmp/also-a-file.json", "auth.oidc.jwks_url"),
        ("BLAZE__AUTH__OIDC__AUDIENCE", "", "auth.oidc.audience"),
    ] {
        let output = Command::new(crate::common::BIN)
            .args(["config", "check"])
            .env("BLAZE__AUTH__OIDC__ISSUER", ISSUER)
            .env("BLAZE__AUTH__OIDC__AUDIENCE", AUDIENCE)
            .env("BLAZE__AUTH__OIDC__JWKS_URL", "https://login.example.com/keys")
            .env(name, value)
            .output()
            .unwrap();
        let text =
            String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success() && text.contains(problem), "{name}={value}: {text}");
    }
}

#[tokio::test]
async fn provider_users_are_linked_in_postgresql_too() {
    let schema = crate::common::Schema::new().await;
    let directory = tempfile::tempdir().unwrap();
    let rsa = SigningKey::new(directory.path(), "rsa-pg", Algorithm::RS256);
    let file = directory.path().join("jwks.json");
    std::fs::write(&file, key_set(&[&rsa])).unwrap();
    let environment = [
        ("BLAZE__STORAGE__DATABASE_URL", crate::common::POSTGRES_URL),
        ("BLAZE__STORAGE__POSTGRES__SCHEMA", schema.0.as_str()),
        ("BLAZE__STORAGE__POSTGRES__MIN_CONNECTIONS", "1"),
        ("BLAZE__SECURITY__PEPPER", "a-pepper-of-the-provider-tests-32+chars"),
        ("BLAZE__AUTH__OIDC__ISSUER", ISSUER),
        ("BLAZE__AUTH__OIDC__AUDIENCE", AUDIENCE),
        ("BLAZE__AUTH__OIDC__JWKS_FILE", file.to_str().unwrap()),
    ];
    let first = Server::start(&environment, &[]).await;
    let token = rsa.sign(&claims("pg-subject", json!({"email": "pg@example.com"})));
    assert_eq!(status_of(&first, &token, "/v1/models").await, 200);
    // A second replica on the same database finds the same user.
    let second = Server::start(&environment, &[]).await;
    assert_eq!(status_of(&second, &token, "/v1/models").await, 200);
    let users =
        json_with_status(client().get(second.url("/admin/users?limit=100")).send().await.unwrap(), 200).await;
    let matching =
        users["data"].as_array().unwrap().iter().filter(|user| user["email"] == "pg@example.com").count();
    assert_eq!(matching, 1);
}
