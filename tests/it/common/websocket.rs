//! A WebSocket client for the tests (tokio-tungstenite) that speaks
//! Blaze's frame protocol.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::Server;

/// Longest any one frame may take to arrive in these tests.
const FRAME_WAIT: Duration = Duration::from_secs(60);

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the server sent next.
#[derive(Debug)]
pub enum Received {
    Frame(Value),
    Close(Option<u16>),
    /// The connection ended without a close frame.
    Ended,
}

pub struct Socket {
    pub stream: Stream,
}

impl Socket {
    /// Connects with `key` in the Authorization header (or none).
    pub async fn connect(server: &Server, key: Option<&str>) -> Self {
        Self::try_connect(server, key).await.expect("the upgrade succeeds")
    }

    pub async fn try_connect(
        server: &Server,
        key: Option<&str>,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let mut request = format!("ws://{}/v1/ws", server.address).into_client_request().unwrap();
        if let Some(key) = key {
            request.headers_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
        }
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { stream })
    }

    pub async fn send(&mut self, frame: Value) {
        self.stream.send(Message::text(frame.to_string())).await.expect("frame sent");
    }

    pub async fn next(&mut self) -> Received {
        loop {
            let message =
                tokio::time::timeout(FRAME_WAIT, self.stream.next()).await.expect("a frame in time");
            return match message {
                Some(Ok(Message::Text(text))) => {
                    Received::Frame(serde_json::from_str(&text).expect("JSON frame"))
                }
                Some(Ok(Message::Close(frame))) => Received::Close(frame.map(|frame| u16::from(frame.code))),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
                Some(Err(_)) | None => Received::Ended,
            };
        }
    }

    pub async fn frame(&mut self) -> Value {
        match self.next().await {
            Received::Frame(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Received::Frame(_) => continue,
                Received::Close(code) => return code,
                Received::Ended => return None,
            }
        }
    }

    /// Every frame until each of `ids` has ended (result, error or done),
    /// grouped by id.
    pub async fn until_ended(&mut self, ids: &[&str]) -> HashMap<String, Vec<Value>> {
        let mut frames: HashMap<String, Vec<Value>> = HashMap::new();
        let mut open: Vec<&str> = ids.to_vec();
        while !open.is_empty() {
            let frame = self.frame().await;
            let id = frame["id"].as_str().unwrap_or_default().to_owned();
            // A duplicate id's error is about the frame, not the live request.
            let ended = matches!(frame["type"].as_str(), Some("result" | "error" | "done"))
                && frame["error"]["code"] != "duplicate_id";
            frames.entry(id.clone()).or_default().push(frame);
            if ended {
                open.retain(|open| *open != id);
            }
        }
        frames
    }
}
