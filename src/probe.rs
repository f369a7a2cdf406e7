//! `blaze health`: asks a running Blaze whether it is alive (or ready), for
//! container health checks in images that carry no HTTP client.
//!
//! It speaks just enough HTTP/1.1 over a std socket to read one status line:
//! a health check runs every few seconds in every container, so it should
//! cost one connection and no runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::settings::ServerSettings;

/// Which endpoint the probe asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/health`: the process answers.
    Live,
    /// `/health/ready`: models loaded and stores reachable.
    Ready,
}

impl Probe {
    fn path(self) -> &'static str {
        match self {
            Probe::Live => "/health",
            Probe::Ready => "/health/ready",
        }
    }
}

/// Where the server configured by `server` can be reached from this host: a
/// wildcard listen address is reached over loopback.
pub fn local_address(server: &ServerSettings) -> String {
    let host = match server.host.as_str() {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" | "[::]" => "[::1]",
        host => host,
    };
    format!("{host}:{}", server.port)
}

/// Why the server is not healthy as seen from here.
#[derive(Debug, thiserror::Error)]
pub enum HealthCheckError {
    #[error("bad address {address}: {source}")]
    Address { address: String, source: std::io::Error },
    #[error("bad address {0}: it resolves to nothing")]
    Unresolved(String),
    #[error("cannot connect to {address}: {source}")]
    Connect { address: String, source: std::io::Error },
    #[error("cannot set timeouts: {0}")]
    Timeouts(std::io::Error),
    #[error("cannot send to {address}: {source}")]
    Send { address: String, source: std::io::Error },
    #[error("no answer from {address}: {source}")]
    NoAnswer { address: String, source: std::io::Error },
    /// `url` answered, with a status other than 200.
    #[error("{url} answered {status_line}")]
    Status { url: String, status_line: String },
    #[error("{0} gave no HTTP status line")]
    NoStatusLine(String),
}

/// Asks `address` (`host:port`) for `probe`'s endpoint; Ok with the status
/// line when it answers 200, Err saying what went wrong otherwise.
pub fn check(address: &str, probe: Probe, timeout: Duration) -> Result<String, HealthCheckError> {
    let socket_address = resolve(address)?;
    let mut stream = TcpStream::connect_timeout(&socket_address, timeout)
        .map_err(|source| HealthCheckError::Connect { address: address.to_owned(), source })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(HealthCheckError::Timeouts)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: blaze-health\r\nConnection: close\r\n\r\n",
        probe.path()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|source| HealthCheckError::Send { address: address.to_owned(), source })?;
    // The status line is all we need; the body may be a JSON document.
    let mut head = Vec::with_capacity(256);
    let mut buffer = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let read = stream
            .read(&mut buffer)
            .map_err(|source| HealthCheckError::NoAnswer { address: address.to_owned(), source })?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let status_line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().trim().to_owned();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(status_line),
        Some(_) => Err(HealthCheckError::Status { url: format!("{address}{}", probe.path()), status_line }),
        None => Err(HealthCheckError::NoStatusLine(format!("{address}{}", probe.path()))),
    }
}

fn resolve(address: &str) -> Result<SocketAddr, HealthCheckError> {
    address
        .to_socket_addrs()
        .map_err(|source| HealthCheckError::Address { address: address.to_owned(), source })?
        .next()
        .ok_or_else(|| HealthCheckError::Unresolved(address.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::net::TcpListener;

    fn serve_once(response: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let read = stream.read(&mut request).unwrap();
            assert!(String::from_utf8_lossy(&request[..read]).starts_with("GET /health/ready HTTP/1.1\r\n"));
            stream.write_all(response.as_bytes()).unwrap();
        });
        address
    }

    #[test]
    fn a_200_passes_and_anything_else_fails_with_the_status() {
        let address = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
        assert_eq!(check(&address, Probe::Ready, Duration::from_secs(2)).unwrap(), "HTTP/1.1 200 OK");
        let address = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let error = check(&address, Probe::Ready, Duration::from_secs(2)).unwrap_err().to_string();
        assert!(error.ends_with("answered HTTP/1.1 503 Service Unavailable"), "{error}");
    }

    #[test]
    fn nothing_listening_is_an_error_naming_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let error = check(&address, Probe::Live, Duration::from_secs(2)).unwrap_err();
        assert!(matches!(error, HealthCheckError::Connect { .. }), "{error:?}");
        let error = error.to_string();
        assert!(error.starts_with(&format!("cannot connect to {address}")), "{error}");
    }

    #[test]
    fn wildcard_hosts_are_reached_over_loopback() {
        let mut server: ServerSettings = serde_json::from_value(serde_json::json!({
            "host": "0.0.0.0", "port": 8080, "workers": 0, "max_connections": 1, "keep_alive_s": 5,
            "max_request_bytes": 1, "request_timeout_s": 1, "drain_delay_s": 0, "shutdown_grace_s": 1,
            "trusted_proxies": [], "forwarded_header": "x_forwarded_for",
            "body_limits": {"chat_completions": 1, "completions": 1, "embeddings": 1, "other": 1}
        }))
        .unwrap();
        assert_eq!(local_address(&server), "127.0.0.1:8080");
        server.host = "::".into();
        assert_eq!(local_address(&server), "[::1]:8080");
        server.host = "10.0.0.5".into();
        assert_eq!(local_address(&server), "10.0.0.5:8080");
    }
}
