//! The one route table. Each route's pattern, who may call it, the scope it
//! needs, how it spends rate-limit budgets, its body limit and its
//! WebSocket name live here and nowhere else: the HTTP transport registers
//! every resource from it (`crate::http::routing`), the checkpoint decides
//! access, scope and budgets on the route actix matched (on the
//! percent-decoded path), never on the raw path, and the WebSocket names
//! its frame types from it. A path that matches no route is a 404 before
//! any check or handler.

use crate::settings::BodyLimitSettings;

/// Every route Blaze serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Health,
    Livez,
    HealthReady,
    Readyz,
    HealthDetailed,
    Metrics,
    MetricsSummary,
    AuthToken,
    AuthRefresh,
    AuthLogout,
    Users,
    User,
    Keys,
    Key,
    KeyRotate,
    Cache,
    ModelLoad,
    ModelUnload,
    Usage,
    AdminUsage,
    Audit,
    Quotas,
    Quota,
    ProfileCpu,
    ProfileMemory,
    ProfileRuntime,
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
    Rerank,
    Score,
    Models,
    Model,
    Tokenize,
    Detokenize,
    WebSocket,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; no credential is read.
    Public,
    /// A valid API key or access token.
    Authenticated,
    /// A valid credential of a user with the admin role.
    Admin,
    /// As `security.metrics_access` says, or the scrape token.
    Monitoring,
    /// The WebSocket upgrade: authenticates itself, by header or by its
    /// first message.
    SelfAuthenticated,
}

/// How a request on the route spends rate-limit budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Health probes: never limited.
    Never,
    /// One request, checked before the handler.
    Request,
    /// One request and its tokens: the handler admits it once it has
    /// counted them.
    Tokens,
    /// Nothing on the upgrade; each request on the socket spends its own.
    PerFrame,
}

/// Which body limit of `server.body_limits` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    ChatCompletions,
    Completions,
    Embeddings,
    Other,
}

impl BodyKind {
    pub fn limit(self, limits: &BodyLimitSettings) -> usize {
        match self {
            BodyKind::ChatCompletions => limits.chat_completions,
            BodyKind::Completions => limits.completions,
            BodyKind::Embeddings => limits.embeddings,
            BodyKind::Other => limits.other,
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct RouteRule {
    pub route: Route,
    /// actix's pattern; also the route's name in metrics and in
    /// `rate_limits.routes`.
    pub pattern: &'static str,
    pub access: Access,
    /// The scope a key or token needs, beyond the access rule.
    pub scope: Option<&'static str>,
    pub budget: Budget,
    pub body: BodyKind,
    /// The request frame type that reaches this route over the WebSocket.
    pub websocket: Option<&'static str>,
}

const fn rule(route: Route, pattern: &'static str, access: Access, scope: Option<&'static str>) -> RouteRule {
    RouteRule {
        route,
        pattern,
        access,
        scope,
        budget: Budget::Request,
        body: BodyKind::Other,
        websocket: None,
    }
}

const fn probe(route: Route, pattern: &'static str) -> RouteRule {
    RouteRule { budget: Budget::Never, ..rule(route, pattern, Access::Public, None) }
}

const fn inference(
    route: Route,
    pattern: &'static str,
    scope: &'static str,
    body: BodyKind,
    websocket: &'static str,
) -> RouteRule {
    RouteRule {
        budget: Budget::Tokens,
        body,
        websocket: Some(websocket),
        ..rule(route, pattern, Access::Authenticated, Some(scope))
    }
}

/// What a route without a row would get: nothing but admins.
const CLOSED: RouteRule = rule(Route::Users, "/", Access::Admin, Some("admin"));

/// The table.
pub const ROUTES: &[RouteRule] = &[
    probe(Route::Health, "/health"),
    probe(Route::Livez, "/livez"),
    probe(Route::HealthReady, "/health/ready"),
    probe(Route::Readyz, "/readyz"),
    RouteRule {
        budget: Budget::Never,
        ..rule(Route::HealthDetailed, "/health/detailed", Access::Monitoring, Some("metrics"))
    },
    rule(Route::Metrics, "/metrics", Access::Monitoring, Some("metrics")),
    rule(Route::MetricsSummary, "/api/metrics/summary", Access::Monitoring, Some("metrics")),
    rule(Route::AuthToken, "/auth/token", Access::Public, None),
    rule(Route::AuthRefresh, "/auth/refresh", Access::Public, None),
    rule(Route::AuthLogout, "/auth/logout", Access::Authenticated, None),
    rule(Route::Users, "/admin/users", Access::Admin, Some("admin")),
    rule(Route::User, "/admin/users/{id}", Access::Admin, Some("admin")),
    rule(Route::Keys, "/admin/keys", Access::Authenticated, Some("keys")),
    rule(Route::Key, "/admin/keys/{id}", Access::Authenticated, Some("keys")),
    rule(Route::KeyRotate, "/admin/keys/{id}/rotate", Access::Authenticated, Some("keys")),
    rule(Route::Cache, "/admin/cache", Access::Admin, Some("admin")),
    rule(Route::ModelLoad, "/admin/models/{id}/load", Access::Admin, Some("admin")),
    rule(Route::ModelUnload, "/admin/models/{id}/unload", Access::Admin, Some("admin")),
    rule(Route::Usage, "/v1/usage", Access::Authenticated, Some("usage")),
    rule(Route::AdminUsage, "/admin/usage", Access::Admin, Some("admin")),
    rule(Route::Audit, "/admin/audit", Access::Admin, Some("admin")),
    rule(Route::Quotas, "/admin/quotas", Access::Admin, Some("admin")),
    rule(Route::Quota, "/admin/quotas/{scope}/{id}", Access::Admin, Some("admin")),
    rule(Route::ProfileCpu, "/admin/profile/cpu", Access::Admin, Some("admin")),
    rule(Route::ProfileMemory, "/admin/profile/memory", Access::Admin, Some("admin")),
    rule(Route::ProfileRuntime, "/admin/profile/runtime", Access::Admin, Some("admin")),
    inference(
        Route::ChatCompletions,
        "/v1/chat/completions",
        "chat",
        BodyKind::ChatCompletions,
        "chat.completions",
    ),
    inference(Route::Completions, "/v1/completions", "completions", BodyKind::Completions, "completions"),
    // A chat by another shape: the same scope and body limit as chat.
    inference(Route::Responses, "/v1/responses", "chat", BodyKind::ChatCompletions, "responses"),
    inference(Route::Embeddings, "/v1/embeddings", "embeddings", BodyKind::Embeddings, "embeddings"),
    // Computed on an embedding model: its scope and body limit.
    inference(Route::Rerank, "/v1/rerank", "embeddings", BodyKind::Embeddings, "rerank"),
    inference(Route::Score, "/v1/score", "embeddings", BodyKind::Embeddings, "score"),
    RouteRule {
        websocket: Some("models.list"),
        ..rule(Route::Models, "/v1/models", Access::Authenticated, Some("models"))
    },
    rule(Route::Model, "/v1/models/{id}", Access::Authenticated, Some("models")),
    // A model's tokenizer, as vLLM's server has it (no /v1): a long text
    // to count takes chat's body limit.
    RouteRule {
        body: BodyKind::ChatCompletions,
        websocket: Some("tokenize"),
        ..rule(Route::Tokenize, "/tokenize", Access::Authenticated, Some("models"))
    },
    RouteRule {
        body: BodyKind::ChatCompletions,
        websocket: Some("detokenize"),
        ..rule(Route::Detokenize, "/detokenize", Access::Authenticated, Some("models"))
    },
    RouteRule {
        budget: Budget::PerFrame,
        ..rule(Route::WebSocket, "/v1/ws", Access::SelfAuthenticated, None)
    },
];

impl Route {
    pub fn rule(self) -> &'static RouteRule {
        // Every route has exactly one row (a unit test checks each); a
        // route without one would get the closed rule: admins only.
        ROUTES.iter().find(|rule| rule.route == self).unwrap_or(&CLOSED)
    }

    pub fn pattern(self) -> &'static str {
        self.rule().pattern
    }

    /// The route a WebSocket request frame of type `kind` goes to.
    pub fn for_frame(kind: &str) -> Option<&'static RouteRule> {
        ROUTES.iter().find(|rule| rule.websocket == Some(kind))
    }

    /// The route whose pattern is exactly `pattern`.
    pub fn for_pattern(pattern: &str) -> Option<&'static RouteRule> {
        ROUTES.iter().find(|rule| rule.pattern == pattern)
    }
}

/// The frame types the WebSocket accepts, for its error message.
pub fn frame_types() -> String {
    ROUTES.iter().filter_map(|rule| rule.websocket).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_its_own_row() {
        use Route::*;
        let every = [
            Health,
            Livez,
            HealthReady,
            Readyz,
            HealthDetailed,
            Metrics,
            MetricsSummary,
            AuthToken,
            AuthRefresh,
            AuthLogout,
            Users,
            User,
            Keys,
            Key,
            KeyRotate,
            Cache,
            ModelLoad,
            ModelUnload,
            Usage,
            AdminUsage,
            Audit,
            Quotas,
            Quota,
            ProfileCpu,
            ProfileMemory,
            ProfileRuntime,
            ChatCompletions,
            Completions,
            Responses,
            Embeddings,
            Rerank,
            Score,
            Models,
            Model,
            Tokenize,
            Detokenize,
            WebSocket,
        ];
        // Adding a variant breaks this match until it is listed above.
        for route in every {
            match route {
                Health | Livez | HealthReady | Readyz | HealthDetailed | Metrics | MetricsSummary
                | AuthToken | AuthRefresh | AuthLogout | Users | User | Keys | Key | KeyRotate | Cache
                | ModelLoad | ModelUnload | Usage | AdminUsage | Audit | Quotas | Quota | ProfileCpu
                | ProfileMemory | ProfileRuntime | ChatCompletions | Completions | Responses | Embeddings
                | Rerank | Score | Models | Model | Tokenize | Detokenize | WebSocket => {}
            }
            assert_eq!(route.rule().route, route, "{route:?} has no row");
        }
        assert_eq!(every.len(), ROUTES.len());
    }

    #[test]
    fn every_route_has_one_row_and_patterns_are_unique() {
        for rule in ROUTES {
            assert_eq!(ROUTES.iter().filter(|other| other.route == rule.route).count(), 1, "{rule:?}");
            assert_eq!(ROUTES.iter().filter(|other| other.pattern == rule.pattern).count(), 1, "{rule:?}");
            assert_eq!(rule.route.rule().pattern, rule.pattern);
            if let Some(scope) = rule.scope {
                assert!(blaze_actors::auth::scopes::SCOPES.contains(&scope), "{rule:?}");
            }
        }
        assert_eq!(Route::for_frame("chat.completions").map(|rule| rule.route), Some(Route::ChatCompletions));
        assert_eq!(Route::for_pattern("/v1/models").map(|rule| rule.route), Some(Route::Models));
        assert!(Route::for_frame("cancel").is_none());
    }

    #[test]
    fn only_health_probes_and_sign_in_are_public() {
        let public: Vec<_> =
            ROUTES.iter().filter(|rule| rule.access == Access::Public).map(|rule| rule.pattern).collect();
        assert_eq!(public, ["/health", "/livez", "/health/ready", "/readyz", "/auth/token", "/auth/refresh"]);
    }
}
