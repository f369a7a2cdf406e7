//! The `logging` section: shipping the JSON log lines to Elasticsearch
//! or OpenSearch (stdout always has them).

use serde::{Deserialize, Serialize};

use super::Settings;

/// Where the log lines go besides stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSettings {
    /// Elasticsearch's or OpenSearch's base URL, e.g.
    /// `http://elasticsearch:9200`. Empty: stdout only.
    pub elasticsearch_url: String,
    /// The index the lines are written to; its template (the fields'
    /// types) is installed for `<index>*` at start.
    pub elasticsearch_index: String,
    /// A file holding an API key as Elasticsearch encodes it (sent as
    /// `Authorization: ApiKey <key>`).
    pub elasticsearch_api_key_file: String,
    /// Basic auth instead: the user, and a file holding the password.
    pub elasticsearch_username: String,
    pub elasticsearch_password_file: String,
    /// A bulk request goes out at this many lines, or bytes, or when
    /// its first line has waited `flush_interval_ms`.
    pub batch_lines: usize,
    pub batch_bytes: usize,
    pub flush_interval_ms: u64,
    /// Lines waiting to be shipped, at most; more are dropped and counted
    /// (`blaze_log_lines_dropped_total{reason="buffer_full"}`).
    pub max_buffered_lines: usize,
    /// Tries of a bulk request after its first (connection errors,
    /// timeouts, 429 and 5xx, and the items refused with 429), with
    /// exponential backoff; then its lines are dropped and counted.
    pub max_retries: u32,
    /// The longest one bulk request may take.
    pub timeout_ms: u64,
}

impl LoggingSettings {
    pub fn shipping_enabled(&self) -> bool {
        !self.elasticsearch_url.trim().is_empty()
    }
}

impl Settings {
    pub(super) fn logging_problems(&self) -> Vec<(&'static str, String)> {
        let logging = &self.logging;
        let mut problems = Vec::new();
        let url = logging.elasticsearch_url.trim();
        if !url.is_empty() {
            match reqwest::Url::parse(url) {
                Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => problems
                    .push((
                    "logging.elasticsearch_url",
                    "must not hold credentials: use elasticsearch_api_key_file, or elasticsearch_username \
                     and elasticsearch_password_file"
                        .to_owned(),
                )),
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {
                    if parsed.query().is_some() || parsed.fragment().is_some() {
                        problems.push((
                            "logging.elasticsearch_url",
                            "must be a base URL, without a query or fragment".to_owned(),
                        ));
                    }
                }
                _ => problems.push((
                    "logging.elasticsearch_url",
                    "must be an http:// or https:// URL (or empty: stdout only)".to_owned(),
                )),
            }
        }
        if let Some(problem) = index_name_problem(&logging.elasticsearch_index) {
            problems.push(("logging.elasticsearch_index", problem));
        }
        let api_key = !logging.elasticsearch_api_key_file.trim().is_empty();
        let user = !logging.elasticsearch_username.trim().is_empty();
        let password = !logging.elasticsearch_password_file.trim().is_empty();
        if api_key && (user || password) {
            problems.push((
                "logging.elasticsearch_api_key_file",
                "set an API key or a username and password, not both".to_owned(),
            ));
        }
        if user != password {
            problems.push((
                "logging.elasticsearch_username",
                "elasticsearch_username and elasticsearch_password_file go together".to_owned(),
            ));
        }
        if logging.elasticsearch_username.contains(':') {
            problems.push(("logging.elasticsearch_username", "must not contain ':'".to_owned()));
        }
        if !(1..=100_000).contains(&logging.batch_lines) {
            problems.push(("logging.batch_lines", "must be 1 to 100000".to_owned()));
        }
        if !(1024..=100 * 1024 * 1024).contains(&logging.batch_bytes) {
            problems.push(("logging.batch_bytes", "must be 1024 to 104857600".to_owned()));
        }
        if !(10..=60_000).contains(&logging.flush_interval_ms) {
            problems.push(("logging.flush_interval_ms", "must be 10 to 60000".to_owned()));
        }
        if !(1..=10_000_000).contains(&logging.max_buffered_lines) {
            problems.push(("logging.max_buffered_lines", "must be 1 to 10000000".to_owned()));
        }
        if logging.max_retries > 100 {
            problems.push(("logging.max_retries", "must be 0 to 100".to_owned()));
        }
        if !(100..=300_000).contains(&logging.timeout_ms) {
            problems.push(("logging.timeout_ms", "must be 100 to 300000".to_owned()));
        }
        problems
    }
}

/// Elasticsearch's rules for an index name (OpenSearch's are the same).
fn index_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 255 {
        return Some("must be 1 to 255 bytes".to_owned());
    }
    if name != name.to_lowercase() {
        return Some("must be lowercase".to_owned());
    }
    if name.starts_with(['-', '_', '+', '.']) || name == "." || name == ".." {
        return Some("must not start with -, _, + or .".to_owned());
    }
    if name.chars().any(|c| {
        matches!(c, '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':') || c.is_control()
    }) {
        return Some("must not contain \\ / * ? \" < > | , # : or spaces".to_owned());
    }
    None
}
