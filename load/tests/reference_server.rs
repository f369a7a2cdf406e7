//! The bare reference server the benchmarks and `--baseline` compare
//! against: it starts on a free port, says where, and answers `/health`.
//!
//! Being an integration test of this package, it also makes `cargo test
//! --workspace` build the package's binaries into the target directory,
//! where Blaze's load-suite tests find `blaze-reference`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use blaze_load::reference::ReferenceServer;

#[test]
fn the_reference_server_answers_health_on_the_port_it_announces() {
    let server = ReferenceServer::start(Path::new(env!("CARGO_BIN_EXE_blaze-reference"))).expect("it starts");
    let address = server.url.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut stream = TcpStream::connect(&address).expect("it listens where it said");
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"ok"}"#), "{answer}");
}
