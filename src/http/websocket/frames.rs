//! The frame protocol: what a client sends, and the result, chunk, done and
//! error frames an answer goes back as, under the slow-client deadline.

use std::rc::Rc;

use std::time::Duration;

use actix_ws::{CloseCode, Session};

use futures_util::StreamExt;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::Notify;

use crate::error::ApiError;
use crate::openai::{Answer, Body, Piece};

/// What a client sends; other fields are refused, so a misspelt `body`
/// is not silently missing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Frame<'a> {
    #[serde(borrow)]
    pub(super) id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    pub(super) kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(super) body: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) token: Option<std::borrow::Cow<'a, str>>,
}

/// Longest request id accepted.
pub(super) const MAX_ID_CHARS: usize = 128;

/// How a socket ends: the close frame's code and reason.
pub(super) struct Ending(pub(super) CloseCode, pub(super) &'static str);

impl Ending {
    pub(super) const SLOW_CLIENT: Self = Self(CloseCode::Policy, "the client does not read its frames");
    pub(super) const SHUTDOWN: Self = Self(CloseCode::Away, "the server is shutting down");
}

/// What a request task sends its frames through: the session's bounded
/// queue, with the slow-client deadline on every frame.
#[derive(Clone)]
pub(super) struct Outbound {
    pub(super) session: Session,
    pub(super) timeout: Duration,
    pub(super) stalled: Rc<Notify>,
}

/// The socket is closed or its client too slow: stop sending.
pub(super) struct Gone;

impl Outbound {
    pub(super) async fn send(&self, frame: String) -> Result<(), Gone> {
        let mut session = self.session.clone();
        match tokio::time::timeout(self.timeout, session.text(frame)).await {
            Ok(Ok(())) => {
                metrics::counter!("blaze_ws_frames_total", "direction" => "out").increment(1);
                Ok(())
            }
            Ok(Err(_closed)) => Err(Gone),
            Err(_late) => {
                self.stalled.notify_one();
                Err(Gone)
            }
        }
    }
}

/// `{"id":…,"type":"result","data":…}` and its kin, built around JSON
/// already serialized.
pub(super) fn frame(id: &str, kind: &str, field: &str, json: &[u8]) -> String {
    let mut text = String::with_capacity(json.len() + id.len() + 40);
    text.push_str("{\"id\":");
    text.push_str(id);
    text.push_str(",\"type\":\"");
    text.push_str(kind);
    text.push('"');
    if !field.is_empty() {
        text.push_str(",\"");
        text.push_str(field);
        text.push_str("\":");
        text.push_str(&String::from_utf8_lossy(json));
    }
    text.push('}');
    text
}

/// An error frame: the OpenAI error object, with the HTTP status it would
/// have had and, for limits, when to retry.
pub(super) fn error_frame(id: &str, error: &ApiError) -> String {
    let mut text = String::with_capacity(256);
    text.push_str("{\"id\":");
    text.push_str(id);
    text.push_str(",\"type\":\"error\",\"status\":");
    text.push_str(&error.status().as_u16().to_string());
    if let Some(seconds) = error.retry_after_s() {
        text.push_str(",\"retry_after_s\":");
        text.push_str(&seconds.to_string());
    }
    text.push_str(",\"error\":");
    text.push_str(&String::from_utf8_lossy(&error.detail_json()));
    text.push('}');
    text
}

/// The id as JSON (`null` when there is none).
pub(super) fn id_json(id: Option<&str>) -> String {
    id.map_or_else(|| "null".to_owned(), |id| serde_json::to_string(id).unwrap_or_else(|_| "null".to_owned()))
}

/// Sends an answer as frames; returns the status it would have had on
/// HTTP, for the metrics and the log.
pub(super) async fn deliver(outbound: &Outbound, id: &str, answer: Result<Answer, ApiError>) -> u16 {
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            let _ = outbound.send(error_frame(id, &error)).await;
            return error.status().as_u16();
        }
    };
    match answer.body {
        Body::Json(json) => {
            let _ = outbound.send(frame(id, "result", "data", &json)).await;
            200
        }
        Body::Stream(mut pieces) => {
            while let Some(piece) = pieces.next().await {
                let sent = match piece {
                    Piece::Chunk(json) | Piece::Event(_, json) => {
                        outbound.send(frame(id, "chunk", "data", &json)).await
                    }
                    Piece::Failed(error) => {
                        let _ = outbound.send(error_frame(id, &error)).await;
                        return error.status().as_u16();
                    }
                };
                if sent.is_err() {
                    return 499;
                }
            }
            let _ = outbound.send(frame(id, "done", "", b"")).await;
            200
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    pub(super) fn frames_wrap_serialized_json() {
        assert_eq!(
            frame("\"a\"", "result", "data", b"{\"x\":1}"),
            r#"{"id":"a","type":"result","data":{"x":1}}"#
        );
        assert_eq!(frame("\"a\"", "done", "", b""), r#"{"id":"a","type":"done"}"#);
        let error = ApiError::bad_request(ErrorCode::InvalidFrame, "bad");
        let parsed: serde_json::Value =
            serde_json::from_str(&error_frame("null", &error)).unwrap_or_default();
        assert_eq!(parsed["type"], "error");
        assert_eq!(parsed["status"], 400);
        assert_eq!(parsed["error"]["code"], "invalid_frame");
        assert_eq!(id_json(Some("q\"1")), r#""q\"1""#);
    }
}
