//! Authentication over real HTTP: deny by default, tokens, and every kind
//! of bad credential, against the real binary.

use std::path::Path;
use std::process::Command;

use crate::common::{
    anonymous_client, client, client_with_key, config_file, expect_error, Server, ADMIN_KEY,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// Asserts a 401 in the OpenAI format, with the Bearer challenge.
async fn expect_unauthenticated(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 401, "{what}");
    assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"blaze\"", "{what}");
    let error = expect_error(response, 401, "invalid_api_key").await;
    assert_eq!(error["type"], "invalid_request_error", "{what}");
}

#[tokio::test]
async fn only_the_listed_routes_are_public() {
    let server = Server::start(&[], &[]).await;
    let anonymous = anonymous_client();
    for path in ["/health", "/livez", "/readyz", "/health/ready", "/health/detailed", "/metrics"] {
        let response = anonymous.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    for path in ["/v1/models", "/v1/models/all-minilm-l6-v2", "/admin/keys", "/admin/users"] {
        let response = anonymous.get(server.url(path)).send().await.unwrap();
        expect_unauthenticated(response, path).await;
    }
    // A path that is no route is a 404 before any credential is asked for.
    let unknown = anonymous.get(server.url("/no/such/route")).send().await.unwrap();
    expect_error(unknown, 404, "unknown_url").await;
    let post = anonymous
        .post(server.url("/v1/embeddings"))
        .json(&json!({"model": "all-minilm-l6-v2", "input": "x"}));
    expect_unauthenticated(post.send().await.unwrap(), "embeddings").await;
    let models = client().get(server.url("/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 200);
    // Behind authentication, unknown routes still say 404.
    let unknown = client().get(server.url("/no/such/route")).send().await.unwrap();
    expect_error(unknown, 404, "unknown_url").await;
}

#[tokio::test]
async fn metrics_can_require_the_admin_role() {
    let server = Server::start(&[("BLAZE__SECURITY__METRICS_ACCESS", "admin")], &[]).await;
    expect_unauthenticated(anonymous_client().get(server.url("/metrics")).send().await.unwrap(), "metrics")
        .await;
    let user_key = create_user_key(&server, "metrics-reader@example.com").await;
    let forbidden = client_with_key(&user_key).get(server.url("/metrics")).send().await.unwrap();
    expect_error(forbidden, 403, "insufficient_permissions").await;
    let metrics = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("blaze_auth_failures_total{reason=\"missing\"} 1"));
}

/// Creates a user and a key for them, as the admin; returns the key.
async fn create_user_key(server: &Server, email: &str) -> String {
    let user: Value = client()
        .post(server.url("/admin/users"))
        .json(&json!({"email": email, "name": "Test user"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key: Value = client()
        .post(server.url("/admin/keys"))
        .json(&json!({"user_id": user["id"], "name": "test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    key["key"].as_str().unwrap().to_owned()
}

async fn tokens(server: &Server, body: Value) -> reqwest::Response {
    anonymous_client().post(server.url("/auth/token")).json(&body).send().await.unwrap()
}

async fn refresh(server: &Server, token: &Value) -> reqwest::Response {
    let body = json!({"refresh_token": token});
    anonymous_client().post(server.url("/auth/refresh")).json(&body).send().await.unwrap()
}

async fn models_status(server: &Server, token: &Value) -> u16 {
    client_with_key(token.as_str().unwrap())
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn refresh_rotates_and_a_replay_revokes_the_whole_sign_in() {
    let server = Server::start(&[], &[]).await;
    let first: Value = tokens(&server, json!({"api_key": ADMIN_KEY})).await.json().await.unwrap();
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 900, "access tokens last 15 minutes by default");
    assert_eq!(models_status(&server, &first["access_token"]).await, 200);

    let second_response = refresh(&server, &first["refresh_token"]).await;
    assert_eq!(second_response.status(), 200);
    assert_eq!(second_response.headers()["cache-control"], "no-store");
    let second: Value = second_response.json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(models_status(&server, &second["access_token"]).await, 200);

    // The first refresh token again: a replay. The sign-in is revoked.
    expect_unauthenticated(refresh(&server, &first["refresh_token"]).await, "replayed refresh").await;
    assert_eq!(models_status(&server, &second["access_token"]).await, 401, "the family's access token");
    assert_eq!(models_status(&server, &first["access_token"]).await, 401);
    expect_unauthenticated(refresh(&server, &second["refresh_token"]).await, "the family's newest refresh")
        .await;
    let metrics = server.metrics().await;
    assert!(metrics.contains("blaze_auth_refresh_replays_total 1"), "{metrics}");

    // A new sign-in is not affected.
    let third: Value = tokens(&server, json!({"api_key": ADMIN_KEY})).await.json().await.unwrap();
    assert_eq!(models_status(&server, &third["access_token"]).await, 200);
}

#[tokio::test]
async fn logout_ends_the_sign_in_and_passwords_sign_in() {
    let server = Server::start(&[], &[]).await;
    let created = client()
        .post(server.url("/admin/users"))
        .json(&json!({"email": "Carol@Example.com", "name": "Carol", "password": "a long enough password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let user: Value = created.json().await.unwrap();
    assert_eq!(
        (user["email"].as_str(), user["has_password"].as_bool()),
        (Some("carol@example.com"), Some(true))
    );
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());

    let signed_in =
        tokens(&server, json!({"email": "carol@example.com", "password": "a long enough password"})).await;
    assert_eq!(signed_in.status(), 200);
    let pair: Value = signed_in.json().await.unwrap();
    assert_eq!(models_status(&server, &pair["access_token"]).await, 200);
    let user_client = client_with_key(pair["access_token"].as_str().unwrap());
    let forbidden = user_client.get(server.url("/admin/users")).send().await.unwrap();
    expect_error(forbidden, 403, "insufficient_permissions").await;

    for wrong in [
        json!({"email": "carol@example.com", "password": "not her password"}),
        json!({"email": "nobody@example.com", "password": "a long enough password"}),
    ] {
        expect_error(tokens(&server, wrong).await, 401, "invalid_credentials").await;
    }
    for malformed in [
        json!({}),
        json!({"api_key": ADMIN_KEY, "email": "x@y"}),
        json!({"api_key": ADMIN_KEY, "scope": "x"}),
    ] {
        assert_eq!(tokens(&server, malformed).await.status(), 400);
    }

    let logout = user_client.post(server.url("/auth/logout")).send().await.unwrap();
    assert_eq!(logout.status(), 204);
    assert_eq!(models_status(&server, &pair["access_token"]).await, 401);
    expect_unauthenticated(refresh(&server, &pair["refresh_token"]).await, "refresh after logout").await;
    // Logout needs a token, not a key.
    let by_key = client().post(server.url("/auth/logout")).send().await.unwrap();
    expect_error(by_key, 400, "invalid_value").await;
}

fn openssl(arguments: &[&str]) {
    let status =
        Command::new("openssl").args(arguments).status().expect("openssl runs (apt-get install openssl)");
    assert!(status.success(), "openssl {arguments:?}");
}

fn ed25519_pair(directory: &Path, name: &str) -> (String, String) {
    let private = directory.join(format!("{name}.pem"));
    let public = directory.join(format!("{name}.pub.pem"));
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", private.to_str().unwrap()]);
    openssl(&["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
    (private.to_str().unwrap().to_owned(), public.to_str().unwrap().to_owned())
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// A token with any header and claims, signed by `sign` over the input.
fn forge(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> String) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let signature = sign(input.as_bytes());
    format!("{input}.{signature}")
}

fn hmac(key: &[u8], input: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(input);
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn every_kind_of_bad_credential_is_refused_with_401() {
    let directory = tempfile::tempdir().unwrap();
    let (private, public) = ed25519_pair(directory.path(), "signing");
    let (other_private, _) = ed25519_pair(directory.path(), "other");
    let config = config_file(&format!(
        "auth:\n  jwt:\n    keys:\n      - {{kid: ed-1, algorithm: EdDSA, private_key_file: {private}, public_key_file: {public}}}\n\
         security:\n  brute_force:\n    max_failures: 100000\n"
    ));
    let server = Server::start(&[], &["--config", config.path().to_str().unwrap()]).await;
    let pair: Value = tokens(&server, json!({"api_key": ADMIN_KEY})).await.json().await.unwrap();
    let access = pair["access_token"].as_str().unwrap().to_owned();
    let refresh_token = pair["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(models_status(&server, &pair["access_token"]).await, 200);

    // The real claims, to forge variants of.
    let segments: Vec<&str> = access.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segments[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segments[1]).unwrap()).unwrap();
    assert_eq!((header["alg"].as_str(), header["kid"].as_str()), (Some("EdDSA"), Some("ed-1")));
    for claim in ["sub", "role", "scopes", "iat", "nbf", "exp", "iss", "aud", "jti", "typ", "sid"] {
        assert!(claims.get(claim).is_some(), "claim {claim} in {claims}");
    }
    let ed_key = EncodingKey::from_ed_pem(&std::fs::read(&private).unwrap()).unwrap();
    let other_key = EncodingKey::from_ed_pem(&std::fs::read(&other_private).unwrap()).unwrap();
    let sign_ed = |kid: &str, claims: &Value, key: &EncodingKey| {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    };
    let with = |changes: Value| {
        let mut changed = claims.clone();
        for (name, value) in changes.as_object().unwrap() {
            if value.is_null() {
                changed.as_object_mut().unwrap().remove(name);
            } else {
                changed[name] = value.clone();
            }
        }
        changed
    };
    // Control: the test's own signature over the real claims is accepted,
    // so each refusal below is the mutation's doing.
    let control = sign_ed("ed-1", &with(json!({"jti": "control"})), &ed_key);
    assert_eq!(models_status(&server, &json!(control)).await, 200);

    let now = claims["iat"].as_i64().unwrap();
    let public_pem = std::fs::read(&public).unwrap();
    let none_header = |alg: &str| json!({"alg": alg, "typ": "JWT", "kid": "ed-1"});
    let tamper_last = |token: &str| {
        let mut bytes = token.as_bytes().to_vec();
        let index = bytes.len() - 2;
        bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    };
    let mut bad: Vec<(&str, String)> = vec![
        ("alg none", forge(&none_header("none"), &claims, |_| String::new())),
        ("alg None", forge(&none_header("None"), &claims, |_| String::new())),
        ("alg NONE with a signature", forge(&none_header("NONE"), &claims, |input| hmac(b"x", input))),
        (
            "HS256 signed with the public key",
            forge(&json!({"alg": "HS256", "typ": "JWT", "kid": "ed-1"}), &claims, |input| {
                hmac(&public_pem, input)
            }),
        ),
        (
            "RS256 header on an EdDSA key",
            forge(&json!({"alg": "RS256", "typ": "JWT", "kid": "ed-1"}), &claims, |input| {
                hmac(&public_pem, input)
            }),
        ),
        ("unknown kid", sign_ed("ed-2", &claims, &ed_key)),
        ("injected kid (path)", sign_ed("../../../../dev/null", &claims, &ed_key)),
        ("injected kid (SQL)", sign_ed("ed-1' OR '1'='1", &claims, &ed_key)),
        ("no kid", {
            let header = Header::new(Algorithm::EdDSA);
            jsonwebtoken::encode(&header, &claims, &ed_key).unwrap()
        }),
        ("another key under the right kid", sign_ed("ed-1", &claims, &other_key)),
        (
            "expired",
            sign_ed("ed-1", &with(json!({"exp": now - 3600, "nbf": now - 7200, "iat": now - 7200})), &ed_key),
        ),
        ("nbf in the future", sign_ed("ed-1", &with(json!({"nbf": now + 3600})), &ed_key)),
        ("string exp", sign_ed("ed-1", &with(json!({"exp": (now + 600).to_string()})), &ed_key)),
        ("string nbf", sign_ed("ed-1", &with(json!({"nbf": now.to_string()})), &ed_key)),
        ("float exp far away", sign_ed("ed-1", &with(json!({"exp": 1e300})), &ed_key)),
        ("no exp", sign_ed("ed-1", &with(json!({"exp": null})), &ed_key)),
        ("no nbf", sign_ed("ed-1", &with(json!({"nbf": null})), &ed_key)),
        ("no iss", sign_ed("ed-1", &with(json!({"iss": null})), &ed_key)),
        ("no aud", sign_ed("ed-1", &with(json!({"aud": null})), &ed_key)),
        ("no sub", sign_ed("ed-1", &with(json!({"sub": null})), &ed_key)),
        ("wrong iss", sign_ed("ed-1", &with(json!({"iss": "evil"})), &ed_key)),
        ("wrong aud", sign_ed("ed-1", &with(json!({"aud": "another-api"})), &ed_key)),
        ("typ refresh", sign_ed("ed-1", &with(json!({"typ": "refresh"})), &ed_key)),
        ("unknown typ", sign_ed("ed-1", &with(json!({"typ": "admin"})), &ed_key)),
        ("no typ", sign_ed("ed-1", &with(json!({"typ": null})), &ed_key)),
        ("unknown user", sign_ed("ed-1", &with(json!({"sub": "0000000000000000"})), &ed_key)),
        ("the real refresh token", refresh_token.clone()),
        ("tampered header", {
            let forged_header = b64(&json!({"alg": "HS256", "typ": "JWT", "kid": "ed-1"}));
            format!("{forged_header}.{}.{}", segments[1], segments[2])
        }),
        (
            "tampered payload",
            format!("{}.{}.{}", segments[0], b64(&with(json!({"role": "admin", "sub": "x"}))), segments[2]),
        ),
        ("tampered signature", tamper_last(&access)),
        ("truncated", access[..access.len() - 10].to_owned()),
        ("no signature", format!("{}.{}.", segments[0], segments[1])),
        ("two segments", format!("{}.{}", segments[0], segments[1])),
        ("four segments", format!("{access}.{}", segments[2])),
        ("non-base64", "!!!.@@@.###".to_owned()),
        (
            "non-JSON segments",
            format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("nope"), URL_SAFE_NO_PAD.encode("nope"), segments[2]),
        ),
        ("oversized", format!("{}.{}.{}", segments[0], "A".repeat(20_000), segments[2])),
        ("a word", "hello".to_owned()),
        ("a key of the wrong shape", "blz_123_456".to_owned()),
        ("an unknown key", format!("blz_{}_{}", "ab".repeat(8), "cd".repeat(32))),
        ("the admin key with a wrong secret", format!("{}{}", &ADMIN_KEY[..ADMIN_KEY.len() - 1], "0")),
        ("the admin key upper-cased", ADMIN_KEY.to_uppercase()),
        ("the admin key with a suffix", format!("{ADMIN_KEY}0")),
    ];
    let oversized_header = format!("{}.{}", "e".repeat(9000), segments[1]);
    bad.push(("oversized header", oversized_header));
    assert!(bad.len() >= 40, "{}", bad.len());
    for (what, token) in &bad {
        let response = client_with_key(token).get(server.url("/v1/models")).send().await.unwrap();
        expect_unauthenticated(response, what).await;
    }
    // Headers that carry no bearer credential at all.
    let anonymous = anonymous_client();
    for (what, header) in [
        ("empty bearer", "Bearer "),
        ("basic scheme", "Basic YWRtaW46YWRtaW4="),
        ("no scheme", ADMIN_KEY),
        ("bearer and spaces", "Bearer    "),
    ] {
        let response =
            anonymous.get(server.url("/v1/models")).header("authorization", header).send().await.unwrap();
        expect_unauthenticated(response, what).await;
    }
    // The real token still works after all that.
    assert_eq!(models_status(&server, &pair["access_token"]).await, 200);
    let metrics = server.metrics().await;
    for reason in ["invalid", "wrong_type", "expired", "malformed", "unknown"] {
        assert!(
            metrics.contains(&format!("blaze_auth_failures_total{{reason=\"{reason}\"}}")),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_token_verified_once_still_expires_on_time() {
    let server =
        Server::start(&[("BLAZE__AUTH__JWT__ACCESS_TTL_S", "2"), ("BLAZE__AUTH__JWT__LEEWAY_S", "0")], &[])
            .await;
    let pair: Value = tokens(&server, json!({"api_key": ADMIN_KEY})).await.json().await.unwrap();
    let access = &pair["access_token"];
    // Verified once, then served from the verified-token cache.
    for _ in 0..3 {
        assert_eq!(models_status(&server, access).await, 200);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while models_status(&server, access).await == 200 {
        assert!(std::time::Instant::now() < deadline, "the token outlived its exp");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let refused =
        client_with_key(access.as_str().unwrap()).get(server.url("/v1/models")).send().await.unwrap();
    expect_unauthenticated(refused, "expired after being cached").await;
}
