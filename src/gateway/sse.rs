//! Server-Sent Events read from an upstream's body as it comes: bytes in,
//! each event's data out (its `data:` lines joined), whatever way the
//! bytes were cut.

use actix_web::web::{Bytes, BytesMut};

/// The most one event may hold before its end comes; past it the stream
/// is taken as broken.
const MAX_EVENT_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an event of the upstream's stream is larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
}

#[derive(Default)]
pub struct EventSplitter {
    buffer: BytesMut,
}

impl EventSplitter {
    /// Takes `bytes`, returning the data of each event they complete
    /// (events without data, comments and keep-alives are skipped).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Bytes>, SseError> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((end, separator)) = event_end(&self.buffer) {
            let event = self.buffer.split_to(end + separator);
            if let Some(data) = event_data(&event[..end]) {
                events.push(data);
            }
        }
        if self.buffer.len() > MAX_EVENT_BYTES {
            return Err(SseError::TooLarge);
        }
        Ok(events)
    }

    /// Whether bytes of an unfinished event are left.
    pub fn has_partial(&self) -> bool {
        self.buffer.iter().any(|byte| !byte.is_ascii_whitespace())
    }
}

/// Where the first event ends (a blank line), and the separator's length.
fn event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut index = 0;
    while index < buffer.len() {
        if buffer[index] == b'\n' {
            match buffer.get(index + 1) {
                Some(b'\n') => return Some((index, 2)),
                Some(b'\r') if buffer.get(index + 2) == Some(&b'\n') => return Some((index, 3)),
                _ => {}
            }
        }
        index += 1;
    }
    None
}

/// The data lines of one event, joined by newlines.
fn event_data(event: &[u8]) -> Option<Bytes> {
    let mut data: Option<Vec<u8>> = None;
    for line in event.split(|&byte| byte == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(value) = line.strip_prefix(b"data:") else { continue };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match &mut data {
            Some(joined) => {
                joined.push(b'\n');
                joined.extend_from_slice(value);
            }
            None => data = Some(value.to_vec()),
        }
    }
    data.map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_whatever_way_the_bytes_are_cut() {
        let stream =
            b"data: {\"a\":1}\n\n: keep-alive\n\nevent: x\ndata: {\"b\":\r\ndata: 2}\r\n\r\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut splitter = EventSplitter::default();
            let mut events = splitter.push(&stream[..cut]).expect("small events");
            events.extend(splitter.push(&stream[cut..]).expect("small events"));
            let texts: Vec<&[u8]> = events.iter().map(|event| &event[..]).collect();
            assert_eq!(texts, vec![&b"{\"a\":1}"[..], b"{\"b\":\n2}", b"[DONE]"], "cut at {cut}");
            assert!(!splitter.has_partial());
        }
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut splitter = EventSplitter::default();
        let chunk = vec![b'x'; 1 << 20];
        let results: Vec<_> = (0..5).map(|_| splitter.push(&chunk)).collect();
        assert_eq!(results.last(), Some(&Err(SseError::TooLarge)));
    }

    #[test]
    fn a_cut_event_is_left_partial() {
        let mut splitter = EventSplitter::default();
        assert!(splitter.push(b"data: {\"a\"").expect("small").is_empty());
        assert!(splitter.has_partial());
    }
}
