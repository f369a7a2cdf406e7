//! The access log line: one per request, the hottest line Blaze writes.
//! It is formatted here by hand into a buffer each thread reuses (no
//! field visitors, no `serde_json::Value`, no allocation once warm), as
//! the same JSON object the fmt layer writes for every other event, and
//! goes to the same writer (stdout, and the shipper when it runs).
//! `BLAZE_LOG` still decides whether it is written: the level check is
//! tracing's own, on the `blaze::access` target.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use tracing_subscriber::fmt::MakeWriter;

use super::Lines;

/// The target of access lines (what `BLAZE_LOG` names to filter them).
pub const ACCESS_TARGET: &str = "blaze::access";

/// Where access lines go once logging is set up; before that (or in a
/// process that never sets it up) they are tracing events like any other.
static WRITER: OnceLock<Lines> = OnceLock::new();

pub(super) fn install(lines: Lines) {
    // A second `init` keeps the first writer, as the subscriber does.
    let _ = WRITER.set(lines);
}

/// How loud a line is: probes and scrapes are logged at debug only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLevel {
    Info,
    Debug,
}

/// One request, as the access log tells it.
pub struct AccessLine<'a> {
    pub level: AccessLevel,
    pub request_id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub latency: Duration,
    /// A model request's model, and its input and output tokens.
    pub model: Option<&'a str>,
    pub tokens: Option<(u64, u64)>,
}

impl AccessLine<'_> {
    /// Writes the line, if `BLAZE_LOG` lets lines of its level through.
    pub fn write(&self) {
        let enabled = match self.level {
            AccessLevel::Info => tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO),
            AccessLevel::Debug => tracing::enabled!(target: ACCESS_TARGET, tracing::Level::DEBUG),
        };
        if !enabled {
            return;
        }
        let Some(lines) = WRITER.get() else {
            self.as_event();
            return;
        };
        thread_local! {
            static BUFFER: RefCell<String> = RefCell::new(String::with_capacity(512));
        }
        BUFFER.with_borrow_mut(|buffer| {
            buffer.clear();
            self.format(buffer, SystemTime::now());
            // The writer takes whole lines; a line it cannot take is lost
            // as any log line is (the writer counts it), never the request.
            let _ = lines.make_writer().write(buffer.as_bytes());
        });
    }

    /// The line as the fmt layer's JSON writes an event, field for field
    /// and in its order.
    fn format(&self, out: &mut String, now: SystemTime) {
        let level = match self.level {
            AccessLevel::Info => "INFO",
            AccessLevel::Debug => "DEBUG",
        };
        let _ = write!(
            out,
            "{{\"timestamp\":\"{}\",\"level\":\"{level}\"",
            humantime::format_rfc3339_micros(now)
        );
        out.push_str(",\"message\":\"request\",\"request_id\":");
        string(out, self.request_id);
        out.push_str(",\"method\":");
        string(out, self.method);
        out.push_str(",\"route\":");
        string(out, self.route);
        let micros = self.latency.as_micros();
        let _ =
            write!(out, ",\"status\":{},\"latency_ms\":{}.{:03}", self.status, micros / 1000, micros % 1000);
        if let Some(model) = self.model {
            out.push_str(",\"model\":");
            string(out, model);
        }
        if let Some((input, output)) = self.tokens {
            let _ = write!(out, ",\"input_tokens\":{input},\"output_tokens\":{output}");
        }
        out.push_str(",\"target\":\"");
        out.push_str(ACCESS_TARGET);
        out.push_str("\"}\n");
    }

    /// The line as a tracing event (before logging is set up).
    fn as_event(&self) {
        let (request_id, method, route, status) = (self.request_id, self.method, self.route, self.status);
        let latency_ms = self.latency.as_secs_f64() * 1000.0;
        let (model, input_tokens, output_tokens) =
            (self.model, self.tokens.map(|(input, _)| input), self.tokens.map(|(_, output)| output));
        match self.level {
            AccessLevel::Info => {
                tracing::info!(target: ACCESS_TARGET, request_id, method, route, status, latency_ms, model, input_tokens, output_tokens, "request")
            }
            AccessLevel::Debug => {
                tracing::debug!(target: ACCESS_TARGET, request_id, method, route, status, latency_ms, model, input_tokens, output_tokens, "request")
            }
        }
    }
}

/// `text` as a JSON string, escaped as serde_json escapes it.
fn string(out: &mut String, text: &str) {
    let needs_escape = text.bytes().any(|byte| byte < 0x20 || byte == b'"' || byte == b'\\');
    if !needs_escape {
        out.push('"');
        out.push_str(text);
        out.push('"');
        return;
    }
    match serde_json::to_string(text) {
        Ok(escaped) => out.push_str(&escaped),
        Err(_) => out.push_str("\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(model: Option<&'a str>, tokens: Option<(u64, u64)>) -> AccessLine<'a> {
        AccessLine {
            level: AccessLevel::Info,
            request_id: "req-1",
            method: "POST",
            route: "/v1/chat/completions",
            status: 200,
            latency: Duration::from_micros(12_345),
            model,
            tokens,
        }
    }

    #[test]
    fn the_line_is_the_json_the_fmt_layer_writes() {
        let mut out = String::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_656_235_123_456);
        line(Some("chat \"quoted\"\n"), Some((7, 9))).format(&mut out, at);
        assert!(out.ends_with("}\n"), "{out}");
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["timestamp"], "2026-12-07T15:10:35.123456Z");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["message"], "request");
        assert_eq!(value["request_id"], "req-1");
        assert_eq!(value["route"], "/v1/chat/completions");
        assert_eq!(value["status"], 200);
        assert_eq!(value["latency_ms"].as_f64(), Some(12.345));
        assert_eq!(value["model"], "chat \"quoted\"\n");
        assert_eq!((value["input_tokens"].as_u64(), value["output_tokens"].as_u64()), (Some(7), Some(9)));
        assert_eq!(value["target"], ACCESS_TARGET);
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 12, "{keys:?}");
    }

    #[test]
    fn fields_without_a_value_are_left_out_and_latency_stays_a_decimal() {
        let mut out = String::new();
        let mut quick = line(None, None);
        quick.latency = Duration::from_nanos(400);
        quick.format(&mut out, SystemTime::UNIX_EPOCH);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(value.get("model").is_none() && value.get("input_tokens").is_none(), "{out}");
        assert!(out.contains("\"latency_ms\":0.000,"), "{out}");
        assert_eq!(value["timestamp"], "1970-01-01T00:00:00.000000Z");
    }
}
