//! An Elasticsearch stand-in for the log shipping tests: a real HTTP/1.1
//! server on a loopback port that takes `PUT /_index_template/<name>` and
//! `POST /<index>/_bulk`, checks the bulk body as Elasticsearch parses it
//! (newline-delimited JSON, an action line then a document line, a final
//! newline, the `application/x-ndjson` content type, the credential), and
//! answers as Elasticsearch does: a whole-request error, or per-item
//! statuses (`201` created, `409` for a `create` whose id exists, and the
//! failures a test asks for).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::gateway::stub::{read_request, respond};

/// How the stand-in misbehaves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// `Authorization` every request must carry (401 otherwise).
    pub authorization: Option<String>,
    /// Answer the next bulk requests 503 (the whole request fails).
    pub unavailable_for: usize,
    /// Apply the next bulk request, then answer only after this long (the
    /// client has given up by then and sends it again).
    pub slow_once: Option<Duration>,
    /// Never answer a bulk request.
    pub silent: bool,
}

/// What the stand-in saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Documents indexed, by `_id`.
    pub documents: BTreeMap<String, Value>,
    /// Bodies of the index templates put, by name.
    pub templates: HashMap<String, Value>,
    /// Every bulk request's `Authorization` header.
    pub authorizations: Vec<Option<String>>,
    /// Every per-item status answered.
    pub item_statuses: Vec<u16>,
    /// Bulk requests answered 503 (whole).
    pub unavailable_answered: usize,
    /// Bodies that Elasticsearch would not parse, with why.
    pub malformed: Vec<String>,
    /// Requests to other paths.
    pub unexpected: Vec<String>,
    /// Document texts refused once with 429 already.
    throttled: Vec<String>,
}

pub struct Elastic {
    pub url: String,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

/// A document whose text holds this is refused for good (400).
pub const REJECT: &str = "reject-me";
/// A document whose text holds this is refused once with 429, then taken.
pub const THROTTLE: &str = "throttle-me";

impl Elastic {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let (sink, rules) = (seen.clone(), behaviour);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, sink.clone(), rules.clone()));
            }
        });
        Self { url, seen, task }
    }

    pub fn seen<T>(&self, read: impl FnOnce(&Seen) -> T) -> T {
        read(&self.seen.lock().unwrap())
    }

    /// The indexed documents `accept` takes.
    pub fn documents(&self, accept: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.seen(|seen| seen.documents.values().filter(|document| accept(document)).cloned().collect())
    }

    /// Waits (at most 20 s) until `ready` holds of what was seen.
    pub async fn wait_for(&self, what: &str, ready: impl Fn(&Seen) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if self.seen(&ready) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.seen(|seen| {
            panic!(
                "{what}: not seen within 20 s; documents: {:#?}",
                seen.documents.values().collect::<Vec<_>>()
            )
        });
    }
}

impl Drop for Elastic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
    })
}

fn error_body(status: u16, kind: &str, reason: &str) -> String {
    json!({"error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason}, "status": status})
        .to_string()
}

async fn serve(mut socket: TcpStream, seen: Arc<Mutex<Seen>>, behaviour: Arc<Mutex<Behaviour>>) {
    let Some((head, body)) = read_request(&mut socket).await else { return };
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default().to_owned());
    let rules = behaviour.lock().unwrap().clone();
    let authorization = header(&head, "authorization");
    if rules.authorization.is_some() && authorization != rules.authorization {
        let body =
            error_body(401, "security_exception", "missing authentication credentials for REST request");
        return respond(&mut socket, "401 Unauthorized", "application/json", &body).await;
    }
    if method == "PUT" && path.starts_with("/_index_template/") {
        let name = path.trim_start_matches("/_index_template/").to_owned();
        match serde_json::from_slice::<Value>(&body) {
            Ok(template) => {
                seen.lock().unwrap().templates.insert(name, template);
                respond(&mut socket, "200 OK", "application/json", r#"{"acknowledged":true}"#).await;
            }
            Err(error) => {
                let body = error_body(400, "x_content_parse_exception", &error.to_string());
                respond(&mut socket, "400 Bad Request", "application/json", &body).await;
            }
        }
        return;
    }
    if method != "POST" || !path.ends_with("/_bulk") {
        seen.lock().unwrap().unexpected.push(request_line);
        return respond(&mut socket, "404 Not Found", "application/json", "{}").await;
    }
    seen.lock().unwrap().authorizations.push(authorization);
    if rules.silent {
        tokio::time::sleep(Duration::from_secs(120)).await;
        return;
    }
    if rules.unavailable_for > 0 {
        behaviour.lock().unwrap().unavailable_for -= 1;
        seen.lock().unwrap().unavailable_answered += 1;
        let body = error_body(503, "unavailable_shards_exception", "primary shard is not active");
        return respond(&mut socket, "503 Service Unavailable", "application/json", &body).await;
    }
    let index = path.trim_start_matches('/').trim_end_matches("/_bulk").to_owned();
    let content_type = header(&head, "content-type").unwrap_or_default();
    let pairs = match parse_bulk(&content_type, &body) {
        Ok(pairs) => pairs,
        Err(why) => {
            seen.lock().unwrap().malformed.push(why.clone());
            let body = error_body(400, "illegal_argument_exception", &why);
            return respond(&mut socket, "400 Bad Request", "application/json", &body).await;
        }
    };
    let mut items = Vec::new();
    let mut errors = false;
    {
        let mut seen = seen.lock().unwrap();
        for (id, document) in pairs {
            let text = document.to_string();
            let (status, error) = if text.contains(REJECT) {
                (
                    400,
                    Some(("document_parsing_exception", "failed to parse field [status] of type [integer]")),
                )
            } else if text.contains(THROTTLE) && !seen.throttled.contains(&text) {
                seen.throttled.push(text.clone());
                (
                    429,
                    Some(("es_rejected_execution_exception", "rejected execution of coordinating operation")),
                )
            } else if seen.documents.contains_key(&id) {
                (409, Some(("version_conflict_engine_exception", "document already exists")))
            } else {
                seen.documents.insert(id.clone(), document);
                (201, None)
            };
            seen.item_statuses.push(status);
            let mut item = json!({"_index": index, "_id": id, "status": status});
            match error {
                Some((kind, reason)) => {
                    errors = true;
                    item["error"] = json!({"type": kind, "reason": reason});
                }
                None => {
                    item["result"] = json!("created");
                    item["_version"] = json!(1);
                }
            }
            items.push(json!({ "create": item }));
        }
    }
    if let Some(delay) = rules.slow_once {
        behaviour.lock().unwrap().slow_once = None;
        tokio::time::sleep(delay).await;
    }
    let answer = json!({"took": 3, "errors": errors, "items": items}).to_string();
    respond(&mut socket, "200 OK", "application/json", &answer).await;
}

/// The bulk body as Elasticsearch reads it: `create` actions with an
/// `_id`, each followed by its document.
fn parse_bulk(content_type: &str, body: &[u8]) -> Result<Vec<(String, Value)>, String> {
    if !content_type.starts_with("application/x-ndjson") {
        return Err(format!("content type {content_type:?}, not application/x-ndjson"));
    }
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    if !text.ends_with('\n') {
        return Err("The bulk request must be terminated by a newline [\\n]".to_owned());
    }
    let lines: Vec<&str> = text.strip_suffix('\n').unwrap_or(text).split('\n').collect();
    if !lines.len().is_multiple_of(2) {
        return Err(format!("{} lines: an action without its document", lines.len()));
    }
    let mut pairs = Vec::new();
    for pair in lines.chunks(2) {
        let action: Value =
            serde_json::from_str(pair[0]).map_err(|error| format!("action {:?}: {error}", pair[0]))?;
        let object = action.as_object().filter(|object| object.len() == 1).ok_or("an action is one key")?;
        let Some(create) = object.get("create") else {
            return Err(format!("action {:?} is not create", pair[0]));
        };
        let id = create["_id"].as_str().ok_or("a create without an _id")?.to_owned();
        let document: Value =
            serde_json::from_str(pair[1]).map_err(|error| format!("document {:?}: {error}", pair[1]))?;
        if !document.is_object() {
            return Err("a document is not an object".to_owned());
        }
        pairs.push((id, document));
    }
    Ok(pairs)
}
