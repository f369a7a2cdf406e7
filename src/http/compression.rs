//! Response compression, negotiated by `Accept-Encoding` through actix's
//! `Compress`, which a request without that header bypasses. Probes, load
//! balancers and most API clients of small JSON answers send none; for them
//! the encoder wrapper was 2% of the CPU of a `/health` load (perf).

use std::rc::Rc;
use std::task::{Context, Poll};

use actix_http::encoding::Encoder;
use actix_service::boxed::{rc_service, RcService};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::ACCEPT_ENCODING;
use actix_web::middleware::Compress;
use actix_web::Error;
use futures_util::future::{Either, LocalBoxFuture, Map};
use futures_util::FutureExt;

/// Compresses responses when `enabled` and the client asks for it.
pub struct Compression {
    enabled: bool,
}

impl Compression {
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }
}

type Encoded<B> = EitherBody<Encoder<B>>;

impl<S, B> Transform<S, ServiceRequest> for Compression
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B, Encoded<B>>>;
    type Error = Error;
    type Transform = CompressionService<S, B>;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        let shared = InnerService(Rc::new(service));
        let enabled = self.enabled;
        let compress = Compress::default().new_transform(shared.clone());
        Box::pin(async move {
            let compress = rc_service(compress.await?);
            Ok(CompressionService { plain: shared, compress, enabled })
        })
    }
}

/// The wrapped service, shared by the plain and the compressing paths.
pub struct InnerService<S>(Rc<S>);

impl<S> Clone for InnerService<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S, B> Service<ServiceRequest> for InnerService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = S::Future;

    fn poll_ready(&self, context: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.0.poll_ready(context)
    }

    fn call(&self, request: ServiceRequest) -> Self::Future {
        self.0.call(request)
    }
}

pub struct CompressionService<S, B> {
    plain: InnerService<S>,
    compress: RcService<ServiceRequest, ServiceResponse<Encoded<B>>, Error>,
    enabled: bool,
}

/// Wraps the body of an uncompressed response.
type ToPlain<B, C> =
    fn(Result<ServiceResponse<B>, Error>) -> Result<ServiceResponse<EitherBody<B, C>>, Error>;
type Plain<F, B, C> = Map<F, ToPlain<B, C>>;

impl<S, B> Service<ServiceRequest> for CompressionService<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B, Encoded<B>>>;
    type Error = Error;
    type Future =
        Either<Plain<S::Future, B, Encoded<B>>, LocalBoxFuture<'static, Result<Self::Response, Error>>>;

    actix_web::dev::forward_ready!(plain);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        if self.enabled && request.headers().contains_key(ACCEPT_ENCODING) {
            let compressed = self.compress.call(request);
            return Either::Right(Box::pin(async move { Ok(compressed.await?.map_into_right_body()) }));
        }
        let plain: ToPlain<B, Encoded<B>> = |result| result.map(ServiceResponse::map_into_left_body);
        Either::Left(self.plain.call(request).map(plain))
    }
}
