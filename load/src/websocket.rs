//! The WebSocket driver: one socket per virtual user on Blaze's `/v1/ws`,
//! authenticated by its Authorization header, one request at a time:
//! `{"id","type","body"}` out, `chunk` frames (read as stream events),
//! then `done`, `result` or `error` back.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::http1::{Answer, Failure, SseReader};

type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Socket {
    stream: Stream,
    next_id: u64,
}

impl Socket {
    pub async fn open(url: &str, authorization: Option<&str>) -> Result<Self, Failure> {
        let mut request = url.into_client_request().map_err(|error| Failure::Protocol(error.to_string()))?;
        if let Some(token) = authorization {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Failure::Protocol("a key that is not a header value".to_owned()))?;
            request.headers_mut().insert("authorization", value);
        }
        // Small buffers: thousands of sockets must not cost the client
        // gigabytes (tungstenite reads into 128 KiB by default).
        let mut config = WebSocketConfig::default();
        config.read_buffer_size = 8192;
        config.write_buffer_size = 0;
        let (stream, response) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
            .await
            .map_err(|error| match error {
                tokio_tungstenite::tungstenite::Error::Io(error) => Failure::Connect(error),
                tokio_tungstenite::tungstenite::Error::Http(response) => {
                    Failure::Protocol(format!("upgrade refused with {}", response.status()))
                }
                other => Failure::Protocol(other.to_string()),
            })?;
        drop(response);
        Ok(Self { stream, next_id: 0 })
    }

    /// Sends one request frame and reads until it ends. A refused request
    /// comes back as its error frame's HTTP status and body.
    pub async fn exchange(
        &mut self,
        kind: &str,
        body: Option<&str>,
        started: Instant,
    ) -> Result<(Answer, u64), Failure> {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let frame = match body {
            Some(body) => format!("{{\"id\":\"{id}\",\"type\":\"{kind}\",\"body\":{body}}}"),
            None => format!("{{\"id\":\"{id}\",\"type\":\"{kind}\"}}"),
        };
        let sent = frame.len() as u64;
        self.stream
            .send(Message::text(frame))
            .await
            .map_err(|error| Failure::Io(std::io::Error::other(error)))?;
        let mut answer = Answer::default();
        let mut reader: Option<SseReader> = None;
        loop {
            let message = match self.stream.next().await {
                Some(Ok(message)) => message,
                Some(Err(error)) => return Err(Failure::Io(std::io::Error::other(error))),
                None => {
                    return Err(Failure::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the socket closed",
                    )))
                }
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Close(close) => {
                    return Err(Failure::Protocol(format!(
                        "closed: {}",
                        close.map_or_else(String::new, |close| close.code.to_string())
                    )))
                }
                Message::Binary(_) => return Err(Failure::Protocol("a binary frame".to_owned())),
            };
            answer.bytes_received += text.len() as u64;
            let frame: serde_json::Value = serde_json::from_str(&text)
                .map_err(|_| Failure::Protocol("a frame that is not JSON".to_owned()))?;
            if frame["id"] != id.as_str() {
                return Err(Failure::Protocol(format!("a frame of another request: {}", frame["id"])));
            }
            match frame["type"].as_str() {
                Some("chunk") => {
                    let data = frame.get("data").map(|data| data.to_string()).unwrap_or_default();
                    reader.get_or_insert_with(SseReader::default).event(data.as_bytes(), started);
                }
                Some("done") => {
                    answer.status = 200;
                    if let Some(mut reader) = reader.take() {
                        reader.mark_done();
                        (answer.stream, answer.stream_error) = reader.finish();
                    }
                    return Ok((answer, sent));
                }
                Some("result") => {
                    answer.status = 200;
                    answer.body =
                        Some(frame.get("data").map(|data| data.to_string()).unwrap_or_default().into_bytes());
                    return Ok((answer, sent));
                }
                Some("error") => {
                    answer.status =
                        frame["status"].as_u64().and_then(|status| u16::try_from(status).ok()).unwrap_or(500);
                    answer.body =
                        Some(serde_json::json!({ "error": frame["error"] }).to_string().into_bytes());
                    return Ok((answer, sent));
                }
                _ => return Err(Failure::Protocol(format!("an unknown frame: {text}"))),
            }
        }
    }
}

/// Closes a socket politely, without waiting long for the answer.
pub async fn close(mut socket: Socket) {
    let _ = tokio::time::timeout(Duration::from_millis(200), socket.stream.close(None)).await;
}
