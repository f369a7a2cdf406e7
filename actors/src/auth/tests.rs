//! The store suite, run on both backends (the embedded file and the real
//! PostgreSQL on 127.0.0.1:5432, database `test`, a schema per test), and
//! the key and token rules.

use std::sync::Arc;
use std::time::Duration;

use super::jwt::{Claims, JwtKeys, JwtSettings, TokenProblem, TokenType};
use super::secrets::{self, KeyHasher, PresentedKey};
use super::store::{
    EmbeddedStore, KeyRecord, PostgresOptions, PostgresStore, RefreshRecord, RefreshUse, Revocation,
    RevocationKind, Role, Store, StoreError, User, UserChanges, UserStatus,
};
use crate::ratelimit::Limits;

use crate::test_postgres::POSTGRES_URL;

/// A fresh PostgreSQL schema, dropped when the guard goes.
struct Schema {
    name: String,
}

impl Schema {
    fn new() -> Self {
        Self { name: format!("blaze_unit_{}", secrets::random_id().unwrap()) }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        crate::test_postgres::drop_schema(&self.name);
    }
}

fn postgres_options(schema: &str) -> PostgresOptions {
    PostgresOptions {
        url: POSTGRES_URL.to_owned(),
        schema: schema.to_owned(),
        min_connections: 2,
        max_connections: 8,
        wait_timeout: Duration::from_secs(5),
        create_timeout: Duration::from_secs(5),
        recycle_timeout: Duration::from_secs(5),
    }
}

fn user(email: &str, role: Role) -> User {
    User {
        id: secrets::random_id().unwrap(),
        email: email.to_owned(),
        name: "Test".to_owned(),
        role,
        status: UserStatus::Active,
        password_hash: None,
        created_at: 1_000,
        updated_at: 1_000,
        limits: Limits::default(),
        team: Some("research".to_owned()),
    }
}

fn key(user_id: &str, at: i64) -> KeyRecord {
    KeyRecord {
        id: secrets::random_id().unwrap(),
        user_id: user_id.to_owned(),
        name: "k".to_owned(),
        secret_hash: "00".repeat(32),
        scopes: vec!["*".to_owned(), "models:read".to_owned()],
        created_at: at,
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        replaced_by: None,
        lineage: String::new(),
        limits: Limits { requests_per_minute: Some(120), tokens_per_minute: None },
    }
}

/// Every store rule, against one backend.
async fn store_suite(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    // Bootstrap happens once.
    let admin = user("admin@example.com", Role::Admin);
    assert!(store.bootstrap(admin.clone(), key(&admin.id, 1_000)).await.unwrap());
    assert!(!store.bootstrap(user("other@example.com", Role::Admin), key("x", 1_000)).await.unwrap());

    // Users: unique email, lookups, pagination, updates.
    let alice = user("alice@example.com", Role::User);
    store.create_user(alice.clone()).await.unwrap();
    let duplicate = User { id: secrets::random_id().unwrap(), ..alice.clone() };
    assert!(matches!(store.create_user(duplicate).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.user(alice.id.clone()).await.unwrap(), Some(alice.clone()));
    assert_eq!(store.user_by_email("alice@example.com".into()).await.unwrap().unwrap().id, alice.id);
    assert_eq!(store.user("nobody".into()).await.unwrap(), None);
    for index in 0..5 {
        store.create_user(user(&format!("u{index}@example.com"), Role::User)).await.unwrap();
    }
    let first = store.users(None, 4).await.unwrap();
    assert_eq!(first.len(), 4);
    let rest = store.users(Some(first[3].id.clone()), 100).await.unwrap();
    assert_eq!(first.len() + rest.len(), 7);
    assert!(first.windows(2).all(|pair| pair[0].id < pair[1].id));
    assert!(rest.iter().all(|user| user.id > first[3].id));
    let limits = Limits { requests_per_minute: None, tokens_per_minute: Some(u64::MAX) };
    let changes = UserChanges {
        role: Some(Role::Admin),
        status: Some(UserStatus::Disabled),
        limits: Some(limits),
        ..Default::default()
    };
    let changed = store.update_user(alice.id.clone(), changes, 2_000).await.unwrap().unwrap();
    assert_eq!(
        (changed.role, changed.status, changed.updated_at),
        (Role::Admin, UserStatus::Disabled, 2_000)
    );
    // Limits round-trip; a count past a BIGINT is stored as the largest.
    let stored = store.user(alice.id.clone()).await.unwrap().unwrap();
    assert_eq!(stored.limits, Limits { requests_per_minute: None, tokens_per_minute: Some(i64::MAX as u64) });
    assert_eq!(changed.name, alice.name);
    assert_eq!(store.update_user("nobody".into(), UserChanges::default(), 1).await.unwrap(), None);

    // Keys: the limit counts active keys only.
    let bob = user("bob@example.com", Role::User);
    store.create_user(bob.clone()).await.unwrap();
    let mut bobs = Vec::new();
    for _ in 0..3 {
        let record = key(&bob.id, 10_000);
        store.create_key(record.clone(), 3).await.unwrap();
        bobs.push(record);
    }
    assert!(matches!(
        store.create_key(key(&bob.id, 10_000), 3).await,
        Err(StoreError::KeyLimit { active: 3 })
    ));
    let revoked = store.revoke_key(bobs[0].id.clone(), 11_000).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(11_000));
    // Revoking twice keeps the first time.
    assert_eq!(store.revoke_key(bobs[0].id.clone(), 12_000).await.unwrap().unwrap().revoked_at, Some(11_000));
    store.create_key(key(&bob.id, 12_000), 3).await.unwrap();
    assert_eq!(store.keys(Some(bob.id.clone()), None, 100).await.unwrap().len(), 4);
    let all = store.keys(None, None, 100).await.unwrap();
    assert_eq!(all.len(), 5, "bootstrap key and bob's four");
    let stored = store.key(bobs[1].id.clone()).await.unwrap().unwrap();
    assert_eq!((&stored.scopes, stored.limits), (&bobs[1].scopes, bobs[1].limits));

    // Rotation: the old key expires at the end of the grace period, the
    // new one is stored, and a rotated key cannot be rotated again.
    let successor = key(&bob.id, 13_000);
    let old = store.rotate_key(bobs[1].id.clone(), successor.clone(), 20_000).await.unwrap().unwrap();
    assert_eq!((old.expires_at, old.replaced_by.as_deref()), (Some(20_000), Some(successor.id.as_str())));
    assert!(store.key(successor.id.clone()).await.unwrap().is_some());
    assert!(old.usable_at(19_999) && !old.usable_at(20_000) && !old.active_at(13_000));
    assert_eq!(store.rotate_key(bobs[1].id.clone(), key(&bob.id, 13_000), 30_000).await.unwrap(), None);
    assert_eq!(store.rotate_key(bobs[0].id.clone(), key(&bob.id, 13_000), 30_000).await.unwrap(), None);

    // Last use, batched; never moves back.
    store.touch_keys(vec![(bobs[2].id.clone(), 50_000), (successor.id.clone(), 60_000)]).await.unwrap();
    store.touch_keys(vec![(bobs[2].id.clone(), 40_000)]).await.unwrap();
    assert_eq!(store.key(bobs[2].id.clone()).await.unwrap().unwrap().last_used_at, Some(50_000));

    // Refresh tokens: spent once; a replay revokes the family.
    let refresh = |jti: &str| RefreshRecord {
        jti: jti.to_owned(),
        family_id: "family-1".to_owned(),
        user_id: bob.id.clone(),
        expires_at: 100_000,
        used_at: None,
        revoked_at: None,
    };
    store.insert_refresh(refresh("r1")).await.unwrap();
    assert!(matches!(store.use_refresh("r1".into(), 1_000).await.unwrap(), RefreshUse::Spent(_)));
    store.insert_refresh(refresh("r2")).await.unwrap();
    assert!(matches!(store.use_refresh("r1".into(), 1_001).await.unwrap(), RefreshUse::Replayed(_)));
    assert_eq!(store.use_refresh("r2".into(), 1_002).await.unwrap(), RefreshUse::Revoked);
    assert_eq!(store.use_refresh("nope".into(), 1_002).await.unwrap(), RefreshUse::Unknown);
    store.insert_refresh(RefreshRecord { family_id: "family-2".into(), ..refresh("r3") }).await.unwrap();
    store.revoke_family("family-2".into(), 1_003).await.unwrap();
    assert_eq!(store.use_refresh("r3".into(), 1_004).await.unwrap(), RefreshUse::Revoked);
    store.insert_refresh(RefreshRecord { family_id: "family-3".into(), ..refresh("r4") }).await.unwrap();
    assert_eq!(store.use_refresh("r4".into(), 100_000).await.unwrap(), RefreshUse::Revoked, "expired");

    // Revocations: in force until they expire, idempotent, pruned.
    let revocation = |subject: &str, expires_at| Revocation {
        kind: RevocationKind::Family,
        subject: subject.to_owned(),
        expires_at,
        created_at: 1,
    };
    store.add_revocation(revocation("a", 5_000)).await.unwrap();
    store.add_revocation(revocation("a", 5_000)).await.unwrap();
    store.add_revocation(revocation("b", 9_000)).await.unwrap();
    let in_force = store.revocations(6_000).await.unwrap();
    assert_eq!(in_force, vec![revocation("b", 9_000)]);
    assert!(store.prune(200_000).await.unwrap() >= 2);
    assert!(store.revocations(0).await.unwrap().is_empty());
}

#[actix_rt::test]
async fn the_embedded_store_passes_the_suite() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("identity.db");
    store_suite(Arc::new(EmbeddedStore::open(&path).unwrap())).await;
    // Reopening applies no migration twice and keeps the data.
    let reopened = EmbeddedStore::open(&path).unwrap();
    assert_eq!(reopened.users(None, 100).await.unwrap().len(), 8);
}

#[actix_rt::test]
async fn the_postgres_store_passes_the_suite() {
    let schema = Schema::new();
    let options = postgres_options(&schema.name);
    let store = PostgresStore::connect(&options)
        .await
        .unwrap_or_else(|error| panic!("PostgreSQL must run on 127.0.0.1:5432 (database `test`): {error}"));
    store_suite(Arc::new(store)).await;
    // A second process connecting to the same schema finds it migrated.
    let again = PostgresStore::connect(&options).await.unwrap();
    assert_eq!(again.users(None, 100).await.unwrap().len(), 8);
}

#[actix_rt::test]
async fn postgres_creations_race_against_the_key_limit_fairly() {
    let schema = Schema::new();
    let store = Arc::new(PostgresStore::connect(&postgres_options(&schema.name)).await.unwrap());
    let owner = user("racer@example.com", Role::User);
    store.create_user(owner.clone()).await.unwrap();
    let attempts = (0..12).map(|_| {
        let (store, owner) = (store.clone(), owner.id.clone());
        async move { store.create_key(key(&owner, 1_000), 5).await }
    });
    let results = futures_util::future::join_all(attempts).await;
    assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 5);
    assert!(results
        .iter()
        .all(|result| result.is_ok() || matches!(result, Err(StoreError::KeyLimit { .. }))));
    // Let the refused transactions' rollbacks reach the server before the
    // schema is dropped.
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[test]
fn keys_have_the_documented_shape_and_only_their_hash_matches() {
    let key = secrets::generate_key().unwrap();
    assert_eq!(key.text.len(), secrets::KEY_LEN);
    assert!(key.text.starts_with(&format!("blz_{}_", key.id)));
    assert!(!format!("{key:?}").contains(&key.text[21..]), "Debug never shows the secret");
    let hasher = KeyHasher::new(&[7u8; 32]).unwrap();
    let stored = hasher.hash(&key.text);
    assert!(!stored.contains(&key.text[21..]));
    let presented = PresentedKey::parse(&key.text).unwrap();
    assert!(hasher.matches(presented, &stored));
    let mut wrong = key.text.clone();
    let last = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(wrong.len() - 1.., last);
    assert!(!hasher.matches(PresentedKey::parse(&wrong).unwrap(), &stored));
    assert!(!KeyHasher::new(&[7u8; 32]).unwrap().matches(presented, "not hex"));
    assert!(!KeyHasher::new(&[8u8; 32]).unwrap().matches(presented, &stored), "another pepper");
    assert!(KeyHasher::new(&[7u8; 31]).is_err(), "short pepper");
    for bad in [
        "",
        "blz_",
        &key.text[..key.text.len() - 1],
        &key.text.to_uppercase(),
        &key.text.replacen("blz_", "blx_", 1),
    ] {
        assert!(PresentedKey::parse(bad).is_none(), "{bad}");
    }
    assert_ne!(secrets::generate_key().unwrap().text, key.text);
}

#[test]
fn passwords_hash_with_argon2id_and_verify() {
    let hash = secrets::hash_password("correct horse battery").unwrap();
    assert!(hash.starts_with("$argon2id$"));
    assert!(secrets::verify_password("correct horse battery", &hash));
    assert!(!secrets::verify_password("correct horse battery!", &hash));
    assert!(!secrets::verify_password("x", "not a hash"));
}

fn settings() -> JwtSettings {
    JwtSettings { issuer: "blaze".into(), audience: "blaze-api".into(), leeway_s: 0 }
}

fn claims(typ: TokenType, exp_in: i64) -> Claims {
    let now = super::now_ms() / 1000;
    Claims {
        sub: "u1".into(),
        role: Role::User,
        scopes: vec!["*".into()],
        iat: now,
        nbf: now,
        exp: now + exp_in,
        iss: "blaze".into(),
        aud: "blaze-api".into(),
        jti: "j1".into(),
        typ,
        sid: "s1".into(),
        src: "password".into(),
        sat: now * 1000,
    }
}

#[test]
fn tokens_verify_only_with_their_kid_type_and_lifetime() {
    let keys = JwtKeys::load(&[], "", Some(vec![1u8; 32]), &settings()).unwrap();
    let access = keys.sign(&claims(TokenType::Access, 60)).unwrap();
    assert_eq!(keys.verify(&access, TokenType::Access).unwrap().sub, "u1");
    assert_eq!(keys.verify(&access, TokenType::Refresh), Err(TokenProblem::WrongType));
    let expired = keys.sign(&claims(TokenType::Access, -60)).unwrap();
    assert_eq!(keys.verify(&expired, TokenType::Access), Err(TokenProblem::Expired));
    let other = JwtKeys::load(&[], "", Some(vec![2u8; 32]), &settings()).unwrap();
    assert_eq!(
        other.verify(&access, TokenType::Access),
        Err(TokenProblem::Invalid),
        "another secret, another kid"
    );
    assert_eq!(keys.verify(&"a".repeat(9000), TokenType::Access), Err(TokenProblem::Invalid));
    // A retired HS256 key still verifies its tokens after a rotation.
    let directory = tempfile::tempdir().unwrap();
    let old_secret = directory.path().join("old");
    std::fs::write(&old_secret, [1u8; 32]).unwrap();
    let new_secret = directory.path().join("new");
    std::fs::write(&new_secret, [3u8; 40]).unwrap();
    let spec = |kid: &str, path: &std::path::Path| super::jwt::JwtKeySpec {
        kid: kid.into(),
        algorithm: super::jwt::JwtAlgorithm::HS256,
        secret_file: Some(path.to_owned()),
        private_key_file: None,
        public_key_file: None,
    };
    let old = JwtKeys::load(&[spec("old", &old_secret)], "", None, &settings()).unwrap();
    let token = old.sign(&claims(TokenType::Access, 60)).unwrap();
    let rotated =
        JwtKeys::load(&[spec("old", &old_secret), spec("new", &new_secret)], "new", None, &settings())
            .unwrap();
    assert_eq!(rotated.signing_kid(), "new");
    assert!(rotated.verify(&token, TokenType::Access).is_ok());
    assert!(old.verify(&rotated.sign(&claims(TokenType::Access, 60)).unwrap(), TokenType::Access).is_err());
    std::fs::write(&old_secret, [1u8; 8]).unwrap();
    assert!(JwtKeys::load(&[spec("old", &old_secret)], "", None, &settings()).is_err(), "short secret");
}

fn openssl(arguments: &[&str]) {
    let status = std::process::Command::new("openssl").args(arguments).status().expect("openssl runs");
    assert!(status.success(), "openssl {arguments:?}");
}

#[test]
fn rs256_keys_from_pem_sign_and_verify_and_refuse_hs256_forgeries() {
    let directory = tempfile::tempdir().unwrap();
    let private = directory.path().join("rsa.pem");
    let public = directory.path().join("rsa.pub.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private.to_str().unwrap(),
    ]);
    openssl(&["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
    let spec = |private_key_file: Option<std::path::PathBuf>| super::jwt::JwtKeySpec {
        kid: "rsa-1".into(),
        algorithm: super::jwt::JwtAlgorithm::RS256,
        secret_file: None,
        private_key_file,
        public_key_file: Some(public.clone()),
    };
    let keys = JwtKeys::load(&[spec(Some(private.clone()))], "", None, &settings()).unwrap();
    let token = keys.sign(&claims(TokenType::Access, 60)).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!((header.alg, header.kid.as_deref()), (jsonwebtoken::Algorithm::RS256, Some("rsa-1")));
    assert_eq!(keys.verify(&token, TokenType::Access).unwrap().sub, "u1");
    // A verification-only key cannot be the signing key.
    assert!(JwtKeys::load(&[spec(None)], "", None, &settings()).is_err());
    // HS256 keyed with the public PEM, under the RSA key's kid: refused.
    let public_pem = std::fs::read(&public).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let forged = jsonwebtoken::encode(
        &header,
        &claims(TokenType::Access, 60),
        &jsonwebtoken::EncodingKey::from_secret(&public_pem).unwrap(),
    )
    .unwrap();
    assert_eq!(keys.verify(&forged, TokenType::Access), Err(TokenProblem::Invalid));
}

#[actix_rt::test]
async fn the_redis_event_bus_publishes_once_a_redis_that_was_down_at_start_comes_up() {
    use super::events::{AuthEvent, EventBus, Incoming, Subscription};
    use crate::test_redis::OwnRedis;

    // Nothing listens on the port yet: the bus is made while Redis is down.
    let mut placeholder = OwnRedis::on_free_port();
    placeholder.kill();
    let port = placeholder.port;
    let url = format!("redis://127.0.0.1:{port}");
    let bus = EventBus::redis(&url).unwrap();
    bus.publish(&AuthEvent::KeyChanged { id: "lost".to_owned() }, None).await;

    let _redis = OwnRedis::start(port);
    let mut subscription = None;
    for _ in 0..50 {
        if let Ok(opened) = Subscription::redis(&url).await {
            subscription = Some(opened);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut subscription = subscription.expect("the test's redis-server started");
    let event = AuthEvent::KeyChanged { id: "delivered".to_owned() };
    // The publisher reconnects on its own; publish until one arrives
    // (bounded). A resync notice (the subscription's own reconnection while
    // the server was starting) is fine: only the event matters.
    let mut received = None;
    for _ in 0..40 {
        bus.publish(&event, None).await;
        if let Ok(Some(Incoming::Event(got))) =
            tokio::time::timeout(Duration::from_millis(250), subscription.next()).await
        {
            received = Some(got);
            break;
        }
    }
    assert_eq!(received, Some(event), "the bus publishes once Redis is up");
    subscription.close().await;
}
