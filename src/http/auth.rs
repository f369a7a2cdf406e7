//! Authentication of every request, deny by default: one explicit list of
//! public routes, everything else needs a valid API key or access token,
//! and `/admin/users` needs the admin role. Validation reads the
//! authenticator's caches directly; no actor is asked.

use std::future::{ready, Ready};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError};
use blaze_actors::auth::{Authenticator, Credential, Failure, Principal};
use futures_util::future::LocalBoxFuture;

use crate::error::ApiError;
use crate::settings::MetricsAccess;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Authenticated,
    Admin,
}

/// The one list of what each route needs; anything not named here needs
/// authentication.
pub fn access_for(path: &str, metrics: MetricsAccess) -> Access {
    match path {
        "/health" | "/livez" | "/readyz" | "/auth/token" | "/auth/refresh" => Access::Public,
        // Authenticates itself: by header, or by its first message
        // (browsers cannot set headers on a WebSocket).
        "/v1/ws" => Access::Public,
        path if path.starts_with("/health/") => Access::Public,
        "/metrics" | "/api/metrics/summary" => match metrics {
            MetricsAccess::Public => Access::Public,
            MetricsAccess::Authenticated => Access::Authenticated,
            MetricsAccess::Admin => Access::Admin,
        },
        path if path == "/admin/users" || path.starts_with("/admin/users/") => Access::Admin,
        "/admin/cache" => Access::Admin,
        #[cfg(feature = "test-hooks")]
        path if path.starts_with("/__test/") => Access::Public,
        _ => Access::Authenticated,
    }
}

/// The bearer credential of a request: `None` if there is no
/// Authorization header, `Some("")` if it is not a bearer one.
pub fn bearer(request: &HttpRequest) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().unwrap_or_default();
    let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
    Some(if scheme.eq_ignore_ascii_case("bearer") { credential } else { "" })
}

pub fn client_address(request: &HttpRequest) -> Option<IpAddr> {
    request.peer_addr().map(|address| address.ip())
}

/// Whose request this is, for budgets and scores: the API key, the token
/// holder, or the client address.
pub fn subject_of(principal: Option<&Principal>, request: &HttpRequest) -> Option<String> {
    match principal {
        Some(principal) => Some(subject_of_principal(principal)),
        None => client_address(request).map(|address| format!("ip:{address}")),
    }
}

/// Authenticates a request for a route that needs it, counting failures
/// against the client address.
pub async fn authenticate(auth: &Authenticator, request: &HttpRequest) -> Result<Principal, ApiError> {
    authenticate_credential(auth, client_address(request), bearer(request)).await
}

/// Authenticates a bearer credential (`None`: there was none; `Some("")`:
/// not a bearer one) from `client`, counting failures against it.
pub async fn authenticate_credential(
    auth: &Authenticator,
    client: Option<IpAddr>,
    credential: Option<&str>,
) -> Result<Principal, ApiError> {
    if let Some(left) = client.and_then(|client| auth.cooldown_left(client)) {
        return Err(ApiError::auth_cooldown(left.as_secs().max(1)));
    }
    let result = match credential {
        Some("") => Err(Failure::Malformed),
        credential => auth.authenticate(credential).await,
    };
    result.map_err(|failure| {
        auth.record_failure(client, failure);
        ApiError::unauthenticated(failure)
    })
}

/// Whose request this is, for a caller known to be authenticated.
pub fn subject_of_principal(principal: &Principal) -> String {
    match &principal.credential {
        Credential::ApiKey { key_id } => format!("key:{key_id}"),
        Credential::Token { .. } => format!("user:{}", principal.user_id),
    }
}

pub struct Authenticate {
    auth: Arc<Authenticator>,
    metrics: MetricsAccess,
}

impl Authenticate {
    pub fn new(auth: Arc<Authenticator>, metrics: MetricsAccess) -> Self {
        Self { auth, metrics }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Authenticate
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = AuthenticateService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(AuthenticateService {
            service: Rc::new(service),
            auth: self.auth.clone(),
            metrics: self.metrics,
        }))
    }
}

pub struct AuthenticateService<S> {
    service: Rc<S>,
    auth: Arc<Authenticator>,
    metrics: MetricsAccess,
}

impl<S, B> Service<ServiceRequest> for AuthenticateService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let access = access_for(request.path(), self.metrics);
        let service = self.service.clone();
        if access == Access::Public {
            return Box::pin(
                async move { service.call(request).await.map(ServiceResponse::map_into_left_body) },
            );
        }
        let auth = self.auth.clone();
        Box::pin(async move {
            let refused = |request: ServiceRequest, error: ApiError| {
                Ok(request.into_response(error.error_response()).map_into_right_body())
            };
            let principal = match authenticate(&auth, request.request()).await {
                Ok(principal) => principal,
                Err(error) => return refused(request, error),
            };
            if access == Access::Admin && !principal.is_admin() {
                metrics::counter!("blaze_auth_failures_total", "reason" => "forbidden").increment(1);
                return refused(request, ApiError::forbidden("This route needs the admin role"));
            }
            request.extensions_mut().insert(principal);
            service.call(request).await.map(ServiceResponse::map_into_left_body)
        })
    }
}

/// The authenticated caller, for handlers behind the middleware.
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let principal = request.extensions().get::<Principal>().cloned();
        ready(principal.map(Caller).ok_or_else(|| ApiError::unauthenticated(Failure::Missing)))
    }
}
