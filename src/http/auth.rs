//! Authentication helpers the checkpoint and the WebSocket share: the
//! bearer credential of a request, its client address, and validation
//! with brute-force counting. Validation reads the authenticator's caches
//! directly; no actor is asked.

use std::future::{ready, Ready};
use std::net::IpAddr;

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use blaze_actors::auth::{secrets, Authenticator, Failure, FailureSubject, Principal};

use super::AppState;
use crate::error::ApiError;

/// The bearer credential of a request: `None` if there is no
/// Authorization header, `Some("")` if it is not a bearer one.
pub fn bearer(request: &HttpRequest) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().unwrap_or_default();
    let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
    Some(if scheme.eq_ignore_ascii_case("bearer") { credential } else { "" })
}

/// The client's address: the peer, or the address a trusted proxy names
/// (`server.trusted_proxies`).
pub fn client_address(request: &HttpRequest) -> Option<IpAddr> {
    let peer = request.peer_addr()?.ip();
    Some(match request.app_data::<web::Data<AppState>>() {
        Some(state) => state.proxies.client(peer, request.headers()),
        None => peer,
    })
}

/// Whose request this is, for budgets and scores: the key's lineage, the
/// token holder, or the client address.
pub fn subject_of(principal: Option<&Principal>, request: &HttpRequest) -> Option<String> {
    match principal {
        Some(principal) => Some(principal.subject()),
        None => client_address(request).map(|address| format!("ip:{address}")),
    }
}

/// Authenticates a bearer credential (`None`: there was none; `Some("")`:
/// not a bearer one) from `client`. A credential that validates is
/// accepted whatever else failed from the same address; a failure is
/// counted against the address and the key id it named, and while either
/// is cooling down failures get 429 instead of 401. A cooling address
/// causes at most a few store reads a second: beyond them, a key that is
/// not in the cache gets 429 with `Retry-After: 1` (so guessed ids cannot
/// load the store).
#[tracing::instrument(target = "blaze::trace", name = "auth", level = "info", skip_all)]
pub async fn authenticate_credential(
    auth: &Authenticator,
    client: Option<IpAddr>,
    credential: Option<&str>,
) -> Result<Principal, ApiError> {
    let result = match credential {
        Some("") => Err(Failure::Malformed),
        credential => auth.authenticate_from(credential, client).await,
    };
    if matches!(result, Err(Failure::NotCached)) {
        return Err(ApiError::unauthenticated(Failure::NotCached));
    }
    result.map_err(|failure| failed(auth, client, credential, failure))
}

/// Counts a failed credential and says what the client gets for it.
pub fn failed(
    auth: &Authenticator,
    client: Option<IpAddr>,
    credential: Option<&str>,
    failure: Failure,
) -> ApiError {
    let subjects = failure_subjects(client, credential);
    let cooling = auth.cooldown_left(&subjects);
    auth.record_failure(&subjects, failure);
    match cooling {
        Some(left) if failure.is_guess() => ApiError::auth_cooldown(left.as_secs().max(1)),
        _ => ApiError::unauthenticated(failure),
    }
}

fn failure_subjects(client: Option<IpAddr>, credential: Option<&str>) -> Vec<FailureSubject> {
    let key = credential
        .and_then(|text| secrets::PresentedKey::parse(text.trim()))
        .map(|key| FailureSubject::Key(key.id.to_owned()));
    client.map(FailureSubject::Address).into_iter().chain(key).collect()
}

/// The authenticated caller, for handlers behind the checkpoint.
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let principal = request.extensions().get::<Principal>().cloned();
        ready(principal.map(Caller).ok_or_else(|| ApiError::unauthenticated(Failure::Missing)))
    }
}

/// An authenticated caller with the admin role and scope. The checkpoint
/// already refuses everyone else on admin routes; handlers that change
/// users or the cache take this too, so a mistake in the table alone
/// cannot open them.
pub struct AdminCaller(pub Principal);

impl FromRequest for AdminCaller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let principal = request.extensions().get::<Principal>().cloned();
        ready(match principal {
            None => Err(ApiError::unauthenticated(Failure::Missing)),
            Some(principal) if !principal.is_admin() => {
                Err(ApiError::forbidden("This route needs the admin role"))
            }
            Some(principal) if !principal.grants("admin") => Err(ApiError::insufficient_scope("admin")),
            Some(principal) => Ok(AdminCaller(principal)),
        })
    }
}
