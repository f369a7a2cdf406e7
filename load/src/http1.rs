//! The HTTP/1.1 driver: one keep-alive connection per virtual user, requests
//! written as prepared bytes, answers parsed with httparse (content-length,
//! chunked or close-delimited bodies), and server-sent events read event by
//! event for the time to first token, the gaps between tokens and the
//! tokens of each stream. Lean on purpose: the suite must never be what
//! limits a measurement.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::StreamFigures;

/// Why an exchange failed; the report counts them by this kind.
#[derive(Debug)]
pub enum Failure {
    Connect(io::Error),
    Io(io::Error),
    Protocol(String),
}

impl Failure {
    pub fn kind(&self) -> String {
        match self {
            Failure::Connect(_) => "connect".to_owned(),
            Failure::Io(_) => "io".to_owned(),
            Failure::Protocol(_) => "protocol".to_owned(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(error) => write!(formatter, "connect: {error}"),
            Failure::Io(error) => write!(formatter, "io: {error}"),
            Failure::Protocol(problem) => write!(formatter, "protocol: {problem}"),
        }
    }
}

/// An answer as the engine needs it.
#[derive(Debug, Default)]
pub struct Answer {
    pub status: u16,
    /// Kept when asked for (captures) or when the status was not the
    /// expected one (to name the error).
    pub body: Option<Vec<u8>>,
    pub bytes_received: u64,
    pub stream: Option<StreamFigures>,
    /// A stream that ended without `[DONE]`, or an error event in it.
    pub stream_error: Option<String>,
}

pub struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// The server said it closes the connection after this answer.
    closing: bool,
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
    None,
}

/// Where the body's bytes go.
struct Sink {
    keep: bool,
    body: Vec<u8>,
    sse: Option<SseReader>,
    started: Instant,
}

impl Sink {
    fn take(&mut self, bytes: &[u8]) {
        if self.keep {
            self.body.extend_from_slice(bytes);
        }
        if let Some(sse) = &mut self.sse {
            sse.feed(bytes, self.started);
        }
    }
}

impl Connection {
    pub async fn open(address: SocketAddr) -> Result<Self, Failure> {
        let stream = TcpStream::connect(address).await.map_err(Failure::Connect)?;
        stream.set_nodelay(true).map_err(Failure::Connect)?;
        Ok(Self { stream, buffer: vec![0; 16 * 1024], start: 0, end: 0, closing: false })
    }

    /// False once the server has said it closes the connection.
    pub fn reusable(&self) -> bool {
        !self.closing
    }

    async fn fill(&mut self) -> Result<usize, Failure> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buffer.len() {
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let grown = self.buffer.len() * 2;
                if grown > 64 << 20 {
                    return Err(Failure::Protocol("an answer's head is over 64 MiB".to_owned()));
                }
                self.buffer.resize(grown, 0);
            }
        }
        let read = self.stream.read(&mut self.buffer[self.end..]).await.map_err(Failure::Io)?;
        self.end += read;
        Ok(read)
    }

    /// Sends a prepared request and reads its whole answer.
    pub async fn exchange(
        &mut self,
        request: &[u8],
        head_only: bool,
        keep_body: bool,
        sse: bool,
        started: Instant,
    ) -> Result<Answer, Failure> {
        self.stream.write_all(request).await.map_err(Failure::Io)?;
        let (status, framing, head_length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 48];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buffer[self.start..self.end]) {
                Ok(httparse::Status::Complete(length)) => {
                    let status = response.code.unwrap_or(0);
                    let mut framing = Framing::UntilClose;
                    for header in response.headers.iter() {
                        if header.name.eq_ignore_ascii_case("content-length") {
                            let length = std::str::from_utf8(header.value)
                                .ok()
                                .and_then(|text| text.trim().parse().ok());
                            framing = Framing::Length(
                                length.ok_or_else(|| Failure::Protocol("a bad content-length".to_owned()))?,
                            );
                        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                            if header.value.eq_ignore_ascii_case(b"chunked") {
                                framing = Framing::Chunked;
                            }
                        } else if header.name.eq_ignore_ascii_case("connection")
                            && header.value.eq_ignore_ascii_case(b"close")
                        {
                            self.closing = true;
                        }
                    }
                    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
                        framing = Framing::None;
                    }
                    if response.version == Some(0) {
                        self.closing = true;
                    }
                    break (status, framing, length);
                }
                Ok(httparse::Status::Partial) => {
                    if self.fill().await? == 0 {
                        return Err(Failure::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "closed before the answer",
                        )));
                    }
                }
                Err(error) => return Err(Failure::Protocol(format!("a malformed answer head: {error}"))),
            }
        };
        self.start += head_length;
        let expected = (200..300).contains(&status);
        let mut sink = Sink {
            keep: keep_body || !expected,
            body: Vec::new(),
            sse: (sse && expected).then(SseReader::default),
            started,
        };
        let mut received = head_length as u64;
        match framing {
            Framing::None => {}
            Framing::Length(length) => {
                received += self.pass(&mut sink, length, "closed inside a body").await?
            }
            Framing::Chunked => received += self.read_chunked(&mut sink).await?,
            Framing::UntilClose => {
                self.closing = true;
                loop {
                    if self.start < self.end {
                        sink.take(&self.buffer[self.start..self.end]);
                        received += (self.end - self.start) as u64;
                        self.start = self.end;
                    }
                    if self.fill().await? == 0 {
                        break;
                    }
                }
            }
        }
        let (stream, stream_error) = match sink.sse.take() {
            Some(reader) => reader.finish(),
            None => (None, None),
        };
        Ok(Answer {
            status,
            body: sink.keep.then_some(sink.body),
            bytes_received: received,
            stream,
            stream_error,
        })
    }

    /// Hands the next `length` bytes of the body to the sink, reading as
    /// needed.
    async fn pass(
        &mut self,
        sink: &mut Sink,
        length: usize,
        early_end: &'static str,
    ) -> Result<u64, Failure> {
        let mut left = length;
        while left > 0 {
            if self.start == self.end && self.fill().await? == 0 {
                return Err(Failure::Io(io::Error::new(io::ErrorKind::UnexpectedEof, early_end)));
            }
            let take = left.min(self.end - self.start);
            sink.take(&self.buffer[self.start..self.start + take]);
            self.start += take;
            left -= take;
        }
        Ok(length as u64)
    }

    async fn read_chunked(&mut self, sink: &mut Sink) -> Result<u64, Failure> {
        let mut received = 0u64;
        loop {
            let (consumed, size) = loop {
                match httparse::parse_chunk_size(&self.buffer[self.start..self.end]) {
                    Ok(httparse::Status::Complete(found)) => break found,
                    Ok(httparse::Status::Partial) => {
                        if self.fill().await? == 0 {
                            return Err(Failure::Io(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "closed inside a chunk",
                            )));
                        }
                    }
                    Err(_) => return Err(Failure::Protocol("a bad chunk size".to_owned())),
                }
            };
            self.start += consumed;
            received += consumed as u64;
            // The data, then its CRLF; the last chunk (0) is followed by
            // optional trailers and a CRLF.
            let length = usize::try_from(size).map_err(|_| Failure::Protocol("a huge chunk".to_owned()))?;
            received += self.pass(sink, length, "closed inside a chunk").await?;
            loop {
                let available = &self.buffer[self.start..self.end];
                if let Some(position) = available.windows(2).position(|pair| pair == b"\r\n") {
                    if size == 0 && position > 0 {
                        // A trailer line: skip it and look for the final CRLF.
                        self.start += position + 2;
                        received += position as u64 + 2;
                        continue;
                    }
                    self.start += position + 2;
                    received += position as u64 + 2;
                    break;
                }
                if self.fill().await? == 0 {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed after a chunk",
                    )));
                }
            }
            if size == 0 {
                return Ok(received);
            }
        }
    }
}

/// Reads server-sent events as they arrive: `data:` lines, `[DONE]`, and
/// OpenAI chunks whose delta carries text.
#[derive(Debug, Default)]
pub struct SseReader {
    pending: Vec<u8>,
    figures: StreamFigures,
    first: Option<Instant>,
    last: Option<Instant>,
    done: bool,
    error: Option<String>,
    usage_tokens: Option<u64>,
}

impl SseReader {
    pub fn feed(&mut self, bytes: &[u8], started: Instant) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(data) = line.strip_prefix(b"data:") {
                let data = data.strip_prefix(b" ").unwrap_or(data);
                self.event(data, started);
            }
        }
    }

    /// One event's data (also the `data` of a WebSocket chunk frame).
    pub fn event(&mut self, data: &[u8], started: Instant) {
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<serde_json::Value>(data) else {
            self.error.get_or_insert_with(|| "stream: an event is not JSON".to_owned());
            return;
        };
        if let Some(error) = chunk.get("error") {
            let code = error.get("code").and_then(|code| code.as_str()).unwrap_or("error");
            self.error.get_or_insert_with(|| format!("stream {code}"));
            return;
        }
        if let Some(tokens) = chunk.pointer("/usage/completion_tokens").and_then(|tokens| tokens.as_u64()) {
            self.usage_tokens = Some(tokens);
        }
        let choice = chunk.pointer("/choices/0");
        let text = choice
            .and_then(|choice| choice.pointer("/delta/content").or_else(|| choice.get("text")))
            .and_then(|text| text.as_str())
            .unwrap_or("");
        if text.is_empty() {
            return;
        }
        let now = Instant::now();
        match self.last {
            None => {
                self.figures.first_token = Some(now.duration_since(started));
                self.first = Some(now);
            }
            Some(last) => self.figures.inter_token.push(now.duration_since(last)),
        }
        self.last = Some(now);
        self.figures.tokens += 1;
    }

    pub fn mark_done(&mut self) {
        self.done = true;
    }

    /// The stream's figures, and an error if it did not end well.
    pub fn finish(mut self) -> (Option<StreamFigures>, Option<String>) {
        if let (Some(first), Some(last)) = (self.first, self.last) {
            self.figures.generation = last.duration_since(first);
        }
        if let Some(tokens) = self.usage_tokens {
            self.figures.tokens = self.figures.tokens.max(tokens);
        }
        let error = self.error.or_else(|| (!self.done).then(|| "stream ended early".to_owned()));
        (Some(self.figures), error)
    }
}

/// A request's prepared head: everything up to the body.
pub fn head(
    method: &str,
    path: &str,
    host: &str,
    authorization: Option<&str>,
    headers: &[(String, String)],
    sse: bool,
    body_length: Option<usize>,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let mut push = |text: &str| head.extend_from_slice(text.as_bytes());
    push(method);
    push(" ");
    push(path);
    push(" HTTP/1.1\r\nHost: ");
    push(host);
    push("\r\nUser-Agent: blaze-load\r\n");
    if let Some(token) = authorization {
        push("Authorization: Bearer ");
        push(token);
        push("\r\n");
    }
    let mut content_type = false;
    for (name, value) in headers {
        content_type |= name.eq_ignore_ascii_case("content-type");
        push(name);
        push(": ");
        push(value);
        push("\r\n");
    }
    if sse {
        push("Accept: text/event-stream\r\n");
    }
    if let Some(length) = body_length {
        if !content_type {
            push("Content-Type: application/json\r\n");
        }
        push("Content-Length: ");
        push(&length.to_string());
        push("\r\n");
    }
    push("\r\n");
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_give_tokens_gaps_and_the_end() {
        let started = Instant::now();
        let mut reader = SseReader::default();
        let chunk =
            |text: &str| format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n");
        let whole = format!("{}{}{}data: [DONE]\n\n", chunk("a"), chunk(""), chunk("b"));
        for piece in whole.as_bytes().chunks(7) {
            reader.feed(piece, started);
        }
        let (figures, error) = reader.finish();
        let figures = figures.unwrap();
        assert_eq!(error, None);
        assert_eq!(figures.tokens, 2);
        assert_eq!(figures.inter_token.len(), 1);
        assert!(figures.first_token.is_some());

        let mut cut = SseReader::default();
        cut.feed(chunk("a").as_bytes(), started);
        assert_eq!(cut.finish().1.as_deref(), Some("stream ended early"));
        let mut failed = SseReader::default();
        failed.feed(b"data: {\"error\":{\"code\":\"guard_blocked\"}}\n\n", started);
        assert_eq!(failed.finish().1.as_deref(), Some("stream guard_blocked"));
    }
}
