//! Tool calls, on the answer's side: the model's text read back into
//! OpenAI's `tool_calls` as it comes, text before a call as content, each
//! call's name as soon as it is whole and its arguments fragment by
//! fragment (what a stream sends as `delta.tool_calls`); the whole answer
//! reads the same text the same way, so both agree to the byte.
//!
//! Under the grammar a call's layout is fixed (`tools::call_text`): its
//! arguments are a JSON object, which ends where its braces balance
//! (outside strings), and the call ends at the close mark after it.

use blaze_actors::inference::tools::{AFTER_ARGUMENTS, BEFORE_ARGUMENTS, BEFORE_NAME, CALL_OPEN};

/// What the text read so far adds to the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    Content(String),
    /// Call `index` starts, to the function `name`.
    Call {
        index: usize,
        name: String,
    },
    /// More of call `index`'s arguments (JSON text).
    Arguments {
        index: usize,
        fragment: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    Content,
    Name,
    Arguments,
    /// After a call: another one, or the end.
    Between,
}

/// Reads a completion's text, piece by piece, for calls.
#[derive(Debug)]
pub struct CallReader {
    reading: Reading,
    /// Text read but not yet given out: it may be part of a mark.
    held: String,
    calls: usize,
    arguments: ObjectScan,
}

impl Default for CallReader {
    fn default() -> Self {
        Self { reading: Reading::Content, held: String::new(), calls: 0, arguments: ObjectScan::default() }
    }
}

/// Where a JSON object's text is, read character by character: how deep
/// in braces and brackets, and whether in a string (and just after a
/// backslash in it).
#[derive(Debug, Default, Clone, Copy)]
struct ObjectScan {
    depth: usize,
    started: bool,
    in_string: bool,
    escaped: bool,
    ended: bool,
}

impl ObjectScan {
    /// How much of `text` belongs to the object; after it ends, none.
    fn take(&mut self, text: &str) -> usize {
        if self.ended {
            return 0;
        }
        for (at, character) in text.char_indices() {
            match character {
                _ if self.escaped => self.escaped = false,
                '\\' if self.in_string => self.escaped = true,
                '"' => self.in_string = !self.in_string,
                _ if self.in_string => {}
                '{' | '[' => {
                    self.depth += 1;
                    self.started = true;
                }
                '}' | ']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.started && self.depth == 0 {
                        self.ended = true;
                        return at + 1;
                    }
                }
                _ => {}
            }
        }
        text.len()
    }
}

/// The whole answer's content (none when empty) and calls (id left out:
/// the reply gives each one).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReadCalls {
    pub content: Option<String>,
    pub calls: Vec<(String, String)>,
}

impl CallReader {
    /// How many calls have started.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// What `piece` adds, as far as it is certain.
    pub fn push(&mut self, piece: &str) -> Vec<ToolEvent> {
        self.held.push_str(piece);
        let mut events = Vec::new();
        while self.step(&mut events) {}
        events
    }

    /// What is left once the completion ended. A call cut off before its
    /// name is whole (by `max_tokens`) is dropped; one cut off in its
    /// arguments keeps what was written, as OpenAI's does (its arguments
    /// are given out as they come).
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let held = std::mem::take(&mut self.held);
        match self.reading {
            Reading::Content if !held.is_empty() => vec![ToolEvent::Content(held)],
            _ => Vec::new(),
        }
    }

    /// One step of reading; false when it needs more text.
    fn step(&mut self, events: &mut Vec<ToolEvent>) -> bool {
        match self.reading {
            Reading::Content => {
                if let Some(at) = self.held.find(CALL_OPEN) {
                    let content = self.held[..at].trim_end();
                    if !content.is_empty() {
                        events.push(ToolEvent::Content(content.to_owned()));
                    }
                    self.held.drain(..at + CALL_OPEN.len());
                    self.reading = Reading::Name;
                    return true;
                }
                // Held back: the start of a mark, and white space that
                // would end the content if a call follows.
                let keep = partial_suffix(&self.held, CALL_OPEN);
                let cut = self.held[..self.held.len() - keep].trim_end().len();
                if cut > 0 {
                    events.push(ToolEvent::Content(self.held.drain(..cut).collect()));
                }
                false
            }
            Reading::Name => {
                let Some(rest) = self.held.strip_prefix(BEFORE_NAME) else {
                    if !BEFORE_NAME.starts_with(self.held.as_str()) {
                        self.not_a_call(events);
                        return true;
                    }
                    return false;
                };
                let Some(end) = rest.find(BEFORE_ARGUMENTS) else { return false };
                let name = rest[..end].to_owned();
                self.held.drain(..BEFORE_NAME.len() + end + BEFORE_ARGUMENTS.len());
                events.push(ToolEvent::Call { index: self.calls, name });
                self.calls += 1;
                self.reading = Reading::Arguments;
                true
            }
            Reading::Arguments => {
                let index = self.calls - 1;
                let taken = self.arguments.take(&self.held);
                if taken > 0 {
                    events.push(ToolEvent::Arguments { index, fragment: self.held.drain(..taken).collect() });
                }
                if !self.arguments.ended {
                    return false;
                }
                // After the object: white space, the call's brace, its close.
                let close = &AFTER_ARGUMENTS[1..];
                let Some(at) = self.held.find(close) else { return false };
                self.held.drain(..at + close.len());
                self.arguments = ObjectScan::default();
                self.reading = Reading::Between;
                true
            }
            Reading::Between => {
                let next = format!("\n{CALL_OPEN}");
                if let Some(rest) = self.held.strip_prefix(next.as_str()) {
                    self.held = rest.to_owned();
                    self.reading = Reading::Name;
                    return true;
                }
                false
            }
        }
    }

    /// A mark that did not start a call (only without a grammar): its text
    /// is content after all.
    fn not_a_call(&mut self, events: &mut Vec<ToolEvent>) {
        let held = std::mem::take(&mut self.held);
        events.push(ToolEvent::Content(format!("{CALL_OPEN}{held}")));
        self.reading = Reading::Content;
    }
}

/// How much of the end of `text` could be the start of `mark`.
fn partial_suffix(text: &str, mark: &str) -> usize {
    (1..mark.len().min(text.len() + 1))
        .rev()
        .find(|&length| {
            text.is_char_boundary(text.len() - length) && mark.starts_with(&text[text.len() - length..])
        })
        .unwrap_or(0)
}

/// Reads a whole completion's text.
pub fn read_whole(text: &str) -> ReadCalls {
    let mut reader = CallReader::default();
    let mut events = reader.push(text);
    events.extend(reader.finish());
    let mut read = ReadCalls::default();
    let mut content = String::new();
    for event in events {
        match event {
            ToolEvent::Content(text) => content.push_str(&text),
            ToolEvent::Call { name, .. } => read.calls.push((name, String::new())),
            ToolEvent::Arguments { index, fragment } => {
                if let Some((_, arguments)) = read.calls.get_mut(index) {
                    arguments.push_str(&fragment);
                }
            }
        }
    }
    read.content = (!content.is_empty()).then_some(content);
    read
}

/// A new call's id, as OpenAI's look.
pub fn call_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("call_{}", &id[..24])
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use blaze_actors::inference::tools::call_text;

    fn streamed(text: &str, piece_chars: usize) -> Vec<ToolEvent> {
        let characters: Vec<char> = text.chars().collect();
        let mut reader = CallReader::default();
        let mut events = Vec::new();
        for piece in characters.chunks(piece_chars) {
            events.extend(reader.push(&piece.iter().collect::<String>()));
        }
        events.extend(reader.finish());
        events
    }

    fn whole_of(events: &[ToolEvent]) -> ReadCalls {
        let mut read = ReadCalls::default();
        let mut content = String::new();
        for event in events {
            match event {
                ToolEvent::Content(text) => content.push_str(text),
                ToolEvent::Call { name, .. } => read.calls.push((name.clone(), String::new())),
                ToolEvent::Arguments { index, fragment } => read.calls[*index].1.push_str(fragment),
            }
        }
        read.content = (!content.is_empty()).then_some(content);
        read
    }

    #[test]
    fn calls_read_whole_and_piece_by_piece_agree() {
        let text = format!(
            "Let me look.  \n{}\n{}",
            call_text("get_weather", r#"{"city": "Paris", "days": {"n": 2}} "#),
            call_text("get_time", "{}"),
        );
        let whole = read_whole(&text);
        assert_eq!(whole.content.as_deref(), Some("Let me look."));
        assert_eq!(
            whole.calls,
            vec![
                ("get_weather".to_owned(), r#"{"city": "Paris", "days": {"n": 2}}"#.to_owned()),
                ("get_time".to_owned(), "{}".to_owned())
            ]
        );
        for size in [1, 2, 3, 5, 7, 13, 1000] {
            let events = streamed(&text, size);
            assert_eq!(whole_of(&events), whole, "pieces of {size}");
            // A call's first event names it; its arguments follow.
            let first = events.iter().position(|event| !matches!(event, ToolEvent::Content(_))).unwrap();
            assert!(
                matches!(&events[first], ToolEvent::Call { index: 0, name } if name == "get_weather"),
                "{events:?}"
            );
        }
        for (_, arguments) in &whole.calls {
            serde_json::from_str::<Value>(arguments).unwrap();
        }
    }

    #[test]
    fn text_without_a_call_is_content_and_marks_are_held_until_certain() {
        let mut reader = CallReader::default();
        assert_eq!(reader.push("Hello <tool"), vec![ToolEvent::Content("Hello".to_owned())]);
        assert_eq!(reader.push("box> there"), vec![ToolEvent::Content(" <toolbox> there".to_owned())]);
        assert_eq!(reader.push("\n"), vec![]);
        assert_eq!(reader.finish(), vec![ToolEvent::Content("\n".to_owned())]);
        assert_eq!(read_whole("plain text").content.as_deref(), Some("plain text"));
        assert_eq!(read_whole("plain text").calls, vec![]);
    }

    #[test]
    fn a_call_cut_off_keeps_its_arguments_so_far() {
        let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, 2";
        let read = read_whole(text);
        assert_eq!(read.calls, vec![("f".to_owned(), "{\"a\": [1, 2".to_owned())]);
        assert_eq!(read_whole("<tool_call>\n{\"name\": \"f").calls, vec![], "no whole name, no call");
        // The arguments end where their braces balance, strings aside;
        // what follows is the call's.
        let mut reader = CallReader::default();
        reader.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": {\"b\": \"}\\\"{\"}");
        assert_eq!(
            reader.push(", \"c\": [2]}}\n</tool_"),
            vec![ToolEvent::Arguments { index: 0, fragment: ", \"c\": [2]}".to_owned() }]
        );
        assert_eq!(reader.finish(), vec![]);
        let cut = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_";
        assert_eq!(read_whole(cut).calls, vec![("f".to_owned(), "{\"a\": 1}".to_owned())]);
    }

    #[test]
    fn ids_look_like_openais() {
        let id = call_id();
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
        assert_ne!(call_id(), id);
    }
}
