//! The HTTP side of the route table (`crate::routes`): each route's
//! resource, with its body limits and the checkpoint wrapped around it.

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::web;

use super::checkpoint::Checkpoint;
pub use crate::routes::*;
use crate::settings::BodyLimitSettings;

/// The resource of `route`: its pattern, its name, the body limits of its
/// kind, the checkpoint around it, and 405 for methods it does not serve.
/// Handlers add their methods with `.route(...)`.
pub fn resource(
    route: Route,
    limits: &BodyLimitSettings,
) -> actix_web::Resource<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<EitherBody<BoxBody>>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let rule = route.rule();
    let limit = rule.body.limit(limits);
    web::resource(rule.pattern)
        .name(rule.pattern)
        .app_data(super::json::BodyLimit(limit))
        .app_data(web::PayloadConfig::new(limit))
        .app_data(super::json_config(limit))
        .default_service(web::to(super::method_not_allowed))
        .wrap(Checkpoint::new(rule, limit))
}
