//! The checkpoint: the middleware around every resource of the route
//! table, built with that route's row. It runs after actix matched the
//! route, so what it decides belongs to the matched route, however the
//! path was spelled. In order: the body limit (from Content-Length, before
//! the body is read), the credential, the role, the scope, then the rate
//! limits (before the handler, or by the handler for routes that count
//! tokens). A refusal answers here; the handler never runs.

use std::future::{ready, Ready};
use std::rc::Rc;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{web, HttpMessage, HttpRequest, ResponseError};
use blaze_actors::auth::Principal;
use futures_util::future::LocalBoxFuture;
use sha2::{Digest, Sha256};

use super::auth::{authenticate_credential, bearer, client_address, subject_of};
use super::cache::CACHE_VERDICT;
use super::network;
use super::ratelimit::{add_headers, add_quota_headers};
use super::routing::{Access, Budget, RouteRule};
use super::AppState;
use crate::error::ApiError;
use crate::openai::{Gate, Meter, Pending, QuotaGate, RequestId};
use crate::settings::MetricsAccess;

/// Who reads the monitoring routes (`security.metrics_access`), and the
/// scrape token's digest.
#[derive(Debug, Clone)]
pub struct MonitoringAccess {
    pub access: MetricsAccess,
    scrape_token: Option<[u8; 32]>,
}

impl MonitoringAccess {
    pub fn new(access: MetricsAccess, scrape_token: &str) -> Self {
        let scrape_token = scrape_token.trim();
        let scrape_token = (!scrape_token.is_empty()).then(|| Sha256::digest(scrape_token.as_bytes()).into());
        Self { access, scrape_token }
    }

    /// Whether `presented` is the scrape token. Digests are compared, so
    /// the comparison's timing says nothing about the token.
    fn is_scrape_token(&self, presented: Option<&str>) -> bool {
        match (self.scrape_token, presented) {
            (Some(expected), Some(presented)) if !presented.is_empty() => {
                let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
                digest == expected
            }
            _ => false,
        }
    }
}

/// The middleware factory of one route.
pub struct Checkpoint {
    rule: &'static RouteRule,
    body_limit: usize,
}

impl Checkpoint {
    pub fn new(rule: &'static RouteRule, body_limit: usize) -> Self {
        Self { rule, body_limit }
    }
}

impl<S> Transform<S, ServiceRequest> for Checkpoint
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error> + 'static,
{
    type Response = ServiceResponse<EitherBody<BoxBody>>;
    type Error = actix_web::Error;
    type Transform = CheckpointService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(CheckpointService {
            service: Rc::new(service),
            rule: self.rule,
            route: network::route_index(self.rule),
            body_limit: self.body_limit,
        }))
    }
}

pub struct CheckpointService<S> {
    service: Rc<S>,
    rule: &'static RouteRule,
    /// The rule's place in the table, for the bytes it counts.
    route: usize,
    body_limit: usize,
}

type Answer = Result<ServiceResponse<EitherBody<BoxBody>>, actix_web::Error>;

fn refuse(request: ServiceRequest, error: &ApiError) -> Answer {
    Ok(request.into_response(error.error_response()).map_into_right_body())
}

impl<S> Service<ServiceRequest> for CheckpointService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error> + 'static,
{
    type Response = ServiceResponse<EitherBody<BoxBody>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Answer>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let (rule, service) = (self.rule, self.service.clone());
        let received = declared_length(&request).unwrap_or(0);
        if received > self.body_limit as u64 {
            return Box::pin(ready(refuse(request, &ApiError::payload_too_large(self.body_limit))));
        }
        let Some(state) = request.app_data::<web::Data<AppState>>().cloned() else {
            // Every app carries its state; without it nothing can be
            // checked, so nothing is served.
            let error = ApiError::unavailable("The server is not configured");
            return Box::pin(ready(refuse(request, &error)));
        };
        let route = self.route;
        Box::pin(async move {
            let answer = checked(state, rule, request, service).await;
            if let Ok(response) = &answer {
                network::count(route, received, response.response().body().size());
            }
            answer
        })
    }
}

/// The checks, in order, then the handler.
async fn checked<S>(
    state: web::Data<AppState>,
    rule: &'static RouteRule,
    request: ServiceRequest,
    service: Rc<S>,
) -> Answer
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error> + 'static,
{
    let principal = match caller(&state, rule, request.request()).await {
        Ok(principal) => principal,
        Err(error) => return refuse(request, &error),
    };
    let pending = match rule.budget {
        Budget::Never | Budget::PerFrame => None,
        Budget::Request | Budget::Tokens => {
            subject_of(principal.as_ref(), request.request()).and_then(|subject| {
                Pending::new(&state.pipeline.limiting, principal.as_ref(), subject, rule.pattern)
            })
        }
    };
    if let (Budget::Tokens, Some(principal)) = (rule.budget, &principal) {
        request.extensions_mut().insert(principal.clone());
        return metered(&state, rule, principal, pending, request, &service).await;
    }
    // The handlers read the caller from the request (`Caller`); moved, as
    // nothing here needs it any more.
    if let Some(principal) = principal {
        request.extensions_mut().insert(principal);
    }
    let Some(pending) = pending else {
        return service.call(request).await.map(ServiceResponse::map_into_left_body);
    };
    let gate = Gate::new(Some(pending));
    let admitted = gate.admit(0).await;
    let mut response = match admitted {
        Ok(_) => service.call(request).await?.map_into_left_body(),
        Err(error) => request.into_response(error.error_response()).map_into_right_body(),
    };
    if let Some(decision) = gate.decision() {
        add_headers(response.headers_mut(), &decision);
    }
    Ok(response)
}

/// A request to a model route: admitted by the pipeline once it has
/// counted the tokens (rate limits, then quotas), and metered for the
/// usage ledger with the status and cache tier its response tells.
async fn metered<S>(
    state: &AppState,
    rule: &RouteRule,
    principal: &Principal,
    pending: Option<Pending>,
    request: ServiceRequest,
    service: &Rc<S>,
) -> Answer
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error> + 'static,
{
    let governance = &state.pipeline.governance;
    let gate = Gate::new(pending).with_quotas(QuotaGate::of(&governance.quotas, principal));
    let meter = {
        let extensions = request.extensions();
        let request_id = extensions.get::<RequestId>().map_or("", RequestId::as_str);
        Meter::start(governance, principal, request_id, rule.pattern)
    };
    request.extensions_mut().insert(gate.clone());
    request.extensions_mut().insert(meter.clone());
    let mut response = service.call(request).await?;
    gate.spend_unadmitted().await;
    meter.status(response.status().as_u16());
    if let Some(verdict) = response.headers().get(CACHE_VERDICT).and_then(|value| value.to_str().ok()) {
        meter.cache(verdict);
    }
    if let Some(decision) = gate.decision() {
        add_headers(response.headers_mut(), &decision);
    }
    if let Some(standing) = gate.quota_standing() {
        add_quota_headers(response.headers_mut(), &standing);
    }
    Ok(response.map_into_left_body())
}

/// The Content-Length the client declared, if any.
fn declared_length(request: &ServiceRequest) -> Option<u64> {
    request.headers().get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The caller the route's access rule, role and scope let through:
/// `None` on routes that need no credential.
async fn caller(
    state: &AppState,
    rule: &RouteRule,
    request: &HttpRequest,
) -> Result<Option<Principal>, ApiError> {
    let access = match rule.access {
        Access::Public | Access::SelfAuthenticated => return Ok(None),
        Access::Monitoring => match state.monitoring.access {
            MetricsAccess::Public => return Ok(None),
            _ if state.monitoring.is_scrape_token(bearer(request)) => return Ok(None),
            MetricsAccess::Authenticated => Access::Authenticated,
            MetricsAccess::Admin => Access::Admin,
        },
        access => access,
    };
    let principal = authenticate_credential(&state.auth, client_address(request), bearer(request)).await?;
    if access == Access::Admin && !principal.is_admin() {
        metrics::counter!("blaze_auth_failures_total", "reason" => "forbidden").increment(1);
        return Err(ApiError::forbidden("This route needs the admin role"));
    }
    if let Some(scope) = rule.scope.filter(|scope| !principal.grants(scope)) {
        metrics::counter!("blaze_auth_failures_total", "reason" => "insufficient_scope").increment(1);
        return Err(ApiError::insufficient_scope(scope));
    }
    Ok(Some(principal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_scrape_token_itself_passes() {
        let access = MonitoringAccess::new(MetricsAccess::Authenticated, "s3cret-scrape-token-of-32-chars!!");
        assert!(access.is_scrape_token(Some("s3cret-scrape-token-of-32-chars!!")));
        assert!(!access.is_scrape_token(Some("s3cret-scrape-token-of-32-chars!")));
        assert!(!access.is_scrape_token(Some("")) && !access.is_scrape_token(None));
        let none = MonitoringAccess::new(MetricsAccess::Authenticated, "");
        assert!(!none.is_scrape_token(Some("")) && !none.is_scrape_token(Some("anything")));
    }
}
