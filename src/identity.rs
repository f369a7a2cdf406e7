//! Identity options from the settings: where the store lives, how it is
//! shared, and the auth policy numbers.

use std::time::Duration;

use blaze_actors::auth::{AuthConfig, BruteForceConfig, IdentityOptions, JwtSettings, PostgresOptions};

use crate::settings::Settings;

pub fn options(settings: &Settings) -> IdentityOptions {
    let (storage, security, auth) = (&settings.storage, &settings.security, &settings.auth);
    let postgres = (!storage.database_url.is_empty()).then(|| {
        let pool = &storage.postgres;
        PostgresOptions {
            url: storage.database_url.clone(),
            schema: pool.schema.clone(),
            min_connections: pool.min_connections,
            max_connections: pool.max_connections,
            wait_timeout: Duration::from_millis(pool.wait_timeout_ms),
            create_timeout: Duration::from_millis(pool.create_timeout_ms),
            recycle_timeout: Duration::from_millis(pool.recycle_timeout_ms),
        }
    });
    let jwt = &auth.jwt;
    IdentityOptions {
        data_dir: storage.data_dir(),
        postgres,
        redis_url: Some(storage.redis_url.clone()).filter(|url| !url.is_empty()),
        pepper: Some(security.pepper.clone()).filter(|pepper| !pepper.is_empty()),
        jwt_keys: jwt.keys.clone(),
        signing_kid: jwt.signing_kid.clone(),
        provider: auth.oidc.provider(),
        config: AuthConfig {
            max_keys_per_user: security.api_key.max_keys_per_user,
            rotation_grace: Duration::from_secs(security.api_key.rotation_grace_s),
            cache_ttl: Duration::from_secs(auth.cache_ttl_s),
            negative_cache_ttl: Duration::from_secs(auth.negative_cache_ttl_s),
            cache_capacity: auth.cache_capacity,
            access_ttl: Duration::from_secs(jwt.access_ttl_s),
            refresh_ttl: Duration::from_secs(jwt.refresh_ttl_s),
            session_max: Duration::from_secs(jwt.session_max_s),
            jwt: JwtSettings {
                issuer: jwt.issuer.clone(),
                audience: jwt.audience.clone(),
                leeway_s: jwt.leeway_s,
            },
            brute_force: BruteForceConfig {
                max_failures: security.brute_force.max_failures,
                window: Duration::from_secs(security.brute_force.window_s),
                cooldown: Duration::from_secs(security.brute_force.cooldown_s),
            },
            password_hashing: auth.password_hashing.config(),
        },
    }
}
