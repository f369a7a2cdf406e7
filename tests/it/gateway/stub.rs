//! A misbehaving upstream for the gateway's tests: a real HTTP/1.1 server
//! on a loopback port whose answer depends on the path's first segment
//! (`/<mode>/v1/...`), recording every request it gets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the stub got.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
    pub body: serde_json::Value,
}

pub struct Stub {
    pub address: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stub {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let address = listener.local_addr().expect("its address").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, log.clone()));
            }
        });
        Self { address, seen, task }
    }

    /// The base URL of one of its modes.
    pub fn base_url(&self, mode: &str) -> String {
        format!("http://{}/{mode}/v1", self.address)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests to `mode` (probes of `/models` left out).
    pub fn requests(&self, mode: &str) -> Vec<Seen> {
        let prefix = format!("/{mode}/");
        self.seen()
            .into_iter()
            .filter(|seen| seen.path.starts_with(&prefix) && !seen.path.ends_with("/models"))
            .collect()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const CHUNK: &str = r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"stub","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;

const FINISH: &str = r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"stub","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;

fn completion(text: &str) -> String {
    serde_json::json!({
        "id": "c", "object": "chat.completion", "created": 0, "model": "stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    })
    .to_string()
}

async fn serve(mut socket: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    let Some((head, body)) = read_request(&mut socket).await else { return };
    let mut lines = head.lines();
    let path = lines.next().and_then(|line| line.split(' ').nth(1)).unwrap_or("/").to_owned();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    };
    let body_json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let stream = body_json["stream"].as_bool() == Some(true);
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        authorization: header("authorization"),
        request_id: header("x-request-id"),
        traceparent: header("traceparent"),
        body: body_json.clone(),
    });
    let mode = path.trim_start_matches('/').split('/').next().unwrap_or_default().to_owned();
    if path.ends_with("/models") {
        let status = if mode == "down" { "503 Service Unavailable" } else { "200 OK" };
        return respond(&mut socket, status, "application/json", r#"{"object":"list","data":[]}"#).await;
    }
    match mode.as_str() {
        "ok" if path.ends_with("/embeddings") => {
            let inputs = body_json["input"].as_array().map_or(1, Vec::len);
            let data: Vec<serde_json::Value> = (0..inputs)
                .map(|index| serde_json::json!({"object": "embedding", "index": index, "embedding": [0.6, 0.8]}))
                .collect();
            let answer = serde_json::json!({"object": "list", "data": data, "model": "stub",
                "usage": {"prompt_tokens": 5, "total_tokens": 5}});
            respond(&mut socket, "200 OK", "application/json", &answer.to_string()).await
        }
        "ok" if path.ends_with("/v1/completions") => {
            let answer = serde_json::json!({"id": "c", "object": "text_completion", "created": 0, "model": "stub",
                "choices": [{"index": 0, "text": " and more.", "finish_reason": "stop"}]});
            respond(&mut socket, "200 OK", "application/json", &answer.to_string()).await
        }
        "ok" if stream => {
            let events = format!(
                "data: {CHUNK}\n\ndata: {CHUNK}\n\ndata: {FINISH}\n\ndata: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"stub\",\"choices\":[],\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}}}\n\ndata: [DONE]\n\n"
            );
            respond(&mut socket, "200 OK", "text/event-stream", &events).await
        }
        "ok" => respond(&mut socket, "200 OK", "application/json", &completion("Hello from the stub.")).await,
        // Headers at once, the body after 3 s (a stream: its first event).
        "slow" => {
            if stream {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                let _ = socket.write_all(head.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                let _ = socket.write_all(format!("data: {CHUNK}\n\ndata: [DONE]\n\n").as_bytes()).await;
            } else {
                tokio::time::sleep(Duration::from_secs(3)).await;
                respond(&mut socket, "200 OK", "application/json", &completion("late")).await;
            }
        }
        "invalid-json" => respond(&mut socket, "200 OK", "application/json", "{\"choices\": [oops").await,
        "no-choices" => respond(&mut socket, "200 OK", "application/json", "{\"hello\": 1}").await,
        "truncated" => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            let _ = socket.write_all(format!("{head}data: {CHUNK}\n\ndata: {{\"id\":").as_bytes()).await;
        }
        "error-mid-stream" => {
            let error = r#"{"error":{"message":"internal failure at sk-upstream-detail","type":"server_error","code":500}}"#;
            let events = format!("data: {CHUNK}\n\ndata: {error}\n\n");
            respond(&mut socket, "200 OK", "text/event-stream", &events).await
        }
        "status-500" => respond(&mut socket, "500 Internal Server Error", "text/plain", "boom").await,
        "status-503" => respond(&mut socket, "503 Service Unavailable", "text/plain", "busy").await,
        "down" => respond(&mut socket, "503 Service Unavailable", "text/plain", "down").await,
        "status-429" => {
            let head = "HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
        }
        "status-400" => {
            let body = r#"{"error":{"message":"temperature is out of range\u0007 for this model","type":"invalid_request_error"}}"#;
            respond(&mut socket, "400 Bad Request", "application/json", body).await
        }
        "status-401" => {
            let body = r#"{"error":{"message":"Incorrect API key provided: sk-gat***","type":"invalid_request_error"}}"#;
            respond(&mut socket, "401 Unauthorized", "application/json", body).await
        }
        _ => respond(&mut socket, "404 Not Found", "text/plain", "no such mode").await,
    }
}

pub(crate) async fn respond(socket: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// The request's head and its body (by its content-length).
pub(crate) async fn read_request(socket: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Some((head, body))
}
