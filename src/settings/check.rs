//! The checks of a loaded configuration's values, by area; each problem
//! names its key.

use super::Settings;

impl Settings {
    pub(super) fn proxy_and_body_problems(&self) -> Vec<(&'static str, String)> {
        let server = &self.server;
        let mut problems = Vec::new();
        if let Err(problem) =
            crate::http::client::TrustedProxies::parse(&server.trusted_proxies, server.forwarded_header)
        {
            problems.push(("server.trusted_proxies", problem.to_string()));
        }
        let bodies = &server.body_limits;
        for (key, value) in [
            ("server.body_limits.chat_completions", bodies.chat_completions),
            ("server.body_limits.completions", bodies.completions),
            ("server.body_limits.embeddings", bodies.embeddings),
            ("server.body_limits.other", bodies.other),
        ] {
            // Above max_request_bytes is allowed: that ceiling holds.
            if value < 1024 {
                problems.push((key, "must be at least 1024".to_owned()));
            }
        }
        problems
    }

    pub(super) fn guard_problems(&self) -> Vec<(&'static str, String)> {
        let guard = &self.guard;
        let mut problems = Vec::new();
        if let Err(problem) = blaze_actors::guard::PatternSet::compile(&guard.categories) {
            problems.push(("guard.categories", problem.to_string()));
        }
        if guard.output_holdback_bytes > 1 << 20 {
            problems.push(("guard.output_holdback_bytes", "must be at most 1048576".to_owned()));
        }
        let scores = &guard.scores;
        if !(scores.block_points >= 0.0 && scores.block_points.is_finite()) {
            problems.push(("guard.scores.block_points", "must be 0 or more".to_owned()));
        }
        if !(scores.threshold > 0.0 && scores.threshold.is_finite()) {
            problems.push(("guard.scores.threshold", "must be above 0".to_owned()));
        }
        if scores.cool_down_s > 86_400 {
            problems.push(("guard.scores.cool_down_s", "must be at most 86400".to_owned()));
        }
        problems
    }

    pub(super) fn cache_problems(&self) -> Vec<(&'static str, String)> {
        let cache = &self.cache;
        let mut problems = Vec::new();
        let mut require = |ok: bool, key: &'static str, problem: &str| {
            if !ok {
                problems.push((key, problem.to_owned()));
            }
        };
        require(
            (1..=30 * 86_400).contains(&self.performance.cache_ttl_s),
            "performance.cache_ttl_s",
            "must be 1 to 2592000",
        );
        require(cache.memory_bytes >= 1 << 20, "cache.memory_bytes", "must be at least 1048576");
        require(
            cache.disk_bytes == 0 || cache.disk_bytes >= 1 << 20,
            "cache.disk_bytes",
            "must be 0 (off) or at least 1048576",
        );
        require(
            (1024..=512 << 20).contains(&cache.redis_max_value_bytes),
            "cache.redis_max_value_bytes",
            "must be 1024 to 536870912",
        );
        require(
            (1..=10_000).contains(&cache.redis_timeout_ms),
            "cache.redis_timeout_ms",
            "must be 1 to 10000",
        );
        require(
            cache.warm_file.is_empty() || std::path::Path::new(&cache.warm_file).is_file(),
            "cache.warm_file",
            "must name a readable file of JSON lines",
        );
        problems
    }

    pub(super) fn rate_limit_problems(&self) -> Vec<(&'static str, String)> {
        let limits = &self.rate_limits;
        let mut problems = Vec::new();
        if !(1..=3600).contains(&limits.burst_s) {
            problems.push(("rate_limits.burst_s", "must be 1 to 3600".to_owned()));
        }
        if !(1..=10_000).contains(&limits.redis_timeout_ms) {
            problems.push(("rate_limits.redis_timeout_ms", "must be 1 to 10000".to_owned()));
        }
        if !(1..=1000).contains(&limits.replicas) {
            problems.push(("rate_limits.replicas", "must be 1 to 1000".to_owned()));
        }
        if limits.backend == super::RateLimitBackend::Redis && self.storage.redis_url.is_empty() {
            problems.push(("rate_limits.backend", "redis needs storage.redis_url".to_owned()));
        }
        for route in &limits.routes {
            if crate::http::routing::Route::for_pattern(&route.route).is_none() {
                let patterns: Vec<_> = crate::http::routing::ROUTES.iter().map(|rule| rule.pattern).collect();
                problems.push((
                    "rate_limits.routes",
                    format!("route `{}` is not a route; routes are {}", route.route, patterns.join(", ")),
                ));
            }
            if route.requests_per_minute == 0 && route.tokens_per_minute == 0 {
                problems.push(("rate_limits.routes", format!("route `{}` sets no budget", route.route)));
            }
        }
        problems
    }

    pub(super) fn identity_problems(&self) -> Vec<(&'static str, String)> {
        use blaze_actors::auth::{secrets, store::postgres_schema_name_is_valid};
        let mut problems = Vec::new();
        let mut require = |ok: bool, key: &'static str, problem: &str| {
            if !ok {
                problems.push((key, problem.to_owned()));
            }
        };
        let (storage, security, auth) = (&self.storage, &self.security, &self.auth);
        let postgres = &storage.postgres;
        require(
            postgres_schema_name_is_valid(&postgres.schema),
            "storage.postgres.schema",
            "must be a plain lower-case identifier (letters, digits, _)",
        );
        require(postgres.max_connections >= 1, "storage.postgres.max_connections", "must be at least 1");
        require(
            postgres.min_connections <= postgres.max_connections,
            "storage.postgres.min_connections",
            "must be at most storage.postgres.max_connections",
        );
        for (key, value) in [
            ("storage.postgres.wait_timeout_ms", postgres.wait_timeout_ms),
            ("storage.postgres.create_timeout_ms", postgres.create_timeout_ms),
            ("storage.postgres.recycle_timeout_ms", postgres.recycle_timeout_ms),
        ] {
            require((1..=600_000).contains(&value), key, "must be 1 to 600000");
        }
        require(
            security.pepper.is_empty() || security.pepper.len() >= secrets::MIN_PEPPER_LEN,
            "security.pepper",
            "must be at least 32 bytes (or empty for one generated in the data dir)",
        );
        require(
            security.api_key.max_keys_per_user >= 1,
            "security.api_key.max_keys_per_user",
            "must be at least 1",
        );
        require(
            security.scrape_token.is_empty() || security.scrape_token.chars().count() >= 32,
            "security.scrape_token",
            "must be at least 32 characters (or empty for none)",
        );
        let brute = &security.brute_force;
        require(brute.max_failures >= 1, "security.brute_force.max_failures", "must be at least 1");
        require(brute.window_s >= 1, "security.brute_force.window_s", "must be at least 1");
        require(brute.cooldown_s >= 1, "security.brute_force.cooldown_s", "must be at least 1");
        require(
            auth.bootstrap_key.is_empty() || secrets::PresentedKey::parse(&auth.bootstrap_key).is_some(),
            "auth.bootstrap_key",
            "must be a Blaze key: blz_, 16 lower-case hex digits, _, 64 lower-case hex digits",
        );
        require(auth.bootstrap_email.contains('@'), "auth.bootstrap_email", "must be an email address");
        require(auth.cache_ttl_s >= 1, "auth.cache_ttl_s", "must be at least 1");
        require(auth.negative_cache_ttl_s >= 1, "auth.negative_cache_ttl_s", "must be at least 1");
        require(auth.cache_capacity >= 1, "auth.cache_capacity", "must be at least 1");
        require(auth.last_used_flush_s >= 1, "auth.last_used_flush_s", "must be at least 1");
        require(auth.resync_interval_s >= 1, "auth.resync_interval_s", "must be at least 1");
        let tokens = &auth.jwt;
        require(!tokens.issuer.is_empty(), "auth.jwt.issuer", "must not be empty");
        require(!tokens.audience.is_empty(), "auth.jwt.audience", "must not be empty");
        require((1..=86_400).contains(&tokens.access_ttl_s), "auth.jwt.access_ttl_s", "must be 1 to 86400");
        require(
            tokens.refresh_ttl_s >= tokens.access_ttl_s,
            "auth.jwt.refresh_ttl_s",
            "must be at least auth.jwt.access_ttl_s",
        );
        require(tokens.leeway_s <= 300, "auth.jwt.leeway_s", "must be at most 300");
        require(
            tokens.session_max_s >= tokens.access_ttl_s,
            "auth.jwt.session_max_s",
            "must be at least auth.jwt.access_ttl_s",
        );
        let hashing = &auth.password_hashing;
        require(
            hashing.threads <= 256,
            "auth.password_hashing.threads",
            "must be at most 256 (0: half the cores)",
        );
        require(
            hashing.queue <= 100_000,
            "auth.password_hashing.queue",
            "must be at most 100000 (0: four per thread)",
        );
        require((0..=19).contains(&hashing.nice), "auth.password_hashing.nice", "must be 0 to 19");
        let mut kids = std::collections::BTreeSet::new();
        for key in &tokens.keys {
            require(
                !key.kid.is_empty() && key.kid.len() <= 64 && kids.insert(key.kid.clone()),
                "auth.jwt.keys",
                "every key needs a kid of 1 to 64 characters, unique",
            );
        }
        problems
    }
}

/// A model's own checks; each problem names the model.
pub(super) fn check_model(id: &str, spec: &blaze_actors::router::ModelSpec) -> Vec<String> {
    let mut problems = Vec::new();
    if id.is_empty() || !id.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte)) {
        problems.push(format!("model id `{id}`: only letters, digits, `-`, `_` and `.`"));
    }
    if let Err(problem) = spec.parsed_source() {
        problems.push(format!("{id}: {problem}"));
    }
    let ranges = [
        ("workers", spec.workers, 1, 64),
        ("threads", spec.threads, 1, 256),
        ("max_batch", spec.max_batch, 1, 4096),
        ("queue_capacity", spec.queue_capacity, 1, 1_000_000),
        ("context_length", spec.context_length, 16, 1_048_576),
    ];
    for (name, value, low, high) in ranges {
        if !(low..=high).contains(&value) {
            problems.push(format!("{id}.{name}: must be {low} to {high}, not {value}"));
        }
    }
    if spec.kind == blaze_actors::router::ModelKind::Chat
        && spec.max_batch > blaze_actors::inference::MAX_SLOTS
    {
        problems.push(format!(
            "{id}.max_batch: a chat model decodes at most {} sequences together",
            blaze_actors::inference::MAX_SLOTS
        ));
    }
    if spec.max_wait_ms > 10_000 {
        problems.push(format!("{id}.max_wait_ms: must be at most 10000"));
    }
    if spec.idle_unload_s > 30 * 86_400 {
        problems
            .push(format!("{id}.idle_unload_s: must be at most 2592000 (30 days), or 0 to keep it loaded"));
    }
    problems
}
