//! The OpenAI pipeline over HTTP: the [`Origin`] of a request (who asks,
//! its rate limit gate, whether the cache may answer, its connection's
//! hang-up) in, the pipeline's [`Answer`] framed as a JSON response or
//! Server-Sent Events out. None of the endpoints' logic lives here.

use actix_web::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use blaze_actors::auth::Principal;
use futures_util::stream::LocalBoxStream;
use futures_util::StreamExt;

use super::auth::subject_of;
use super::cache::{mark, refuses_cache};
use crate::openai::RequestId;
use crate::openai::{Answer, Body, Gate, Meter, Origin, Piece};

/// The gateway's target that answered a routed request.
const SERVED_BY: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static("x-blaze-served-by");

/// An HTTP request's origin, behind the checkpoint.
pub fn origin(request: &HttpRequest, principal: Principal, gate: Gate) -> Origin {
    let subject = subject_of(Some(&principal), request).unwrap_or_default();
    // A shared header value: nothing is copied on the request path.
    let request_id = request.extensions().get::<RequestId>().cloned().unwrap_or_else(RequestId::generate);
    Origin {
        principal,
        subject,
        request_id,
        gate,
        meter: request.extensions().get::<Meter>().cloned().unwrap_or_default(),
        cache_allowed: !refuses_cache(request),
        hangup: super::disconnect::hangup(request),
        screened: false,
    }
}

/// The HTTP response of an answer: JSON, or an SSE stream (`data: {chunk}`
/// events, `data: [DONE]` at the end; named events `event: {name}` and
/// `data: {event}`, with nothing at the end; a failure is an error event,
/// never followed by `[DONE]`).
pub fn respond(answer: Answer) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    if let Some(lookup) = answer.lookup {
        mark(&mut response, lookup, answer.key.as_ref());
    }
    if let Some(similarity) = answer.similarity {
        response.insert_header(("x-blaze-cache-similarity", format!("{similarity:.4}")));
    }
    if let Some(target) = &answer.served_by {
        if let Ok(value) = HeaderValue::from_str(target) {
            response.insert_header((SERVED_BY, value));
        }
    }
    match answer.body {
        Body::Json(bytes) => {
            response.insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json"))).body(bytes)
        }
        Body::Stream(pieces) => response
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("text/event-stream")))
            .insert_header((CACHE_CONTROL, HeaderValue::from_static("no-cache")))
            .streaming(server_sent_events(pieces)),
    }
}

fn event(name: Option<&str>, json: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(json.len() + 8 + name.map_or(0, |name| name.len() + 8));
    if let Some(name) = name {
        framed.extend_from_slice(b"event: ");
        framed.extend_from_slice(name.as_bytes());
        framed.push(b'\n');
    }
    framed.extend_from_slice(b"data: ");
    framed.extend_from_slice(json);
    framed.extend_from_slice(b"\n\n");
    Bytes::from(framed)
}

fn server_sent_events(
    pieces: LocalBoxStream<'static, Piece>,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    // The pieces, and whether they are named events (no `[DONE]` then).
    futures_util::stream::unfold(Some((pieces, false)), |state| async move {
        let (mut pieces, named) = state?;
        match pieces.next().await {
            Some(Piece::Chunk(json)) => Some((Ok(event(None, &json)), Some((pieces, named)))),
            Some(Piece::Event(name, json)) => Some((Ok(event(Some(name), &json)), Some((pieces, true)))),
            Some(Piece::Failed(error)) => {
                let body = serde_json::to_vec(&error.body(None)).unwrap_or_default();
                Some((Ok(event(named.then_some("error"), &body)), None))
            }
            None if named => None,
            None => Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    async fn events_of(pieces: Vec<Piece>) -> Vec<String> {
        let answer = Answer {
            body: Body::Stream(futures_util::stream::iter(pieces).boxed_local()),
            lookup: None,
            key: None,
            served_by: None,
            similarity: None,
        };
        let response = respond(answer);
        assert_eq!(response.headers().get(CONTENT_TYPE).unwrap(), "text/event-stream");
        let bytes =
            actix_web::body::to_bytes(response.into_body()).await.unwrap_or_else(|_| panic!("a body"));
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        text.split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| event.strip_prefix("data: ").expect("data events only").to_owned())
            .collect()
    }

    #[actix_rt::test]
    async fn a_failed_stream_ends_with_an_error_event_and_no_done() {
        let chunk = Piece::Chunk(Bytes::from_static(br#"{"choices":[]}"#));
        let events = events_of(vec![chunk, Piece::Failed(ApiError::worker_failed("m"))]).await;
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0], r#"{"choices":[]}"#);
        let error: serde_json::Value = serde_json::from_str(&events[1]).unwrap();
        assert_eq!(error["error"]["code"], "worker_failed");
    }

    #[actix_rt::test]
    async fn a_finished_stream_ends_with_done() {
        let chunk = Piece::Chunk(Bytes::from_static(br#"{"choices":[]}"#));
        let events = events_of(vec![chunk]).await;
        assert_eq!(events, vec![r#"{"choices":[]}"#.to_owned(), "[DONE]".to_owned()]);
    }
}
