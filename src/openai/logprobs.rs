//! Log probabilities: what a request asks (chat's `logprobs` and
//! `top_logprobs`, completions' integer `logprobs`), the completion's
//! pieces kept with the log probabilities of their tokens, and the two
//! shapes OpenAI gives them in (chat's `content` list, completions'
//! parallel lists).

use std::collections::BTreeMap;

use blaze_actors::inference::{TokenLogprob, MOST_TOP_LOGPROBS};
use serde_json::Value;

use super::response::{ChatAlternative, ChatLogprobs, ChatTokenLogprob, TextLogprobs};
use super::validate::invalid;
use super::Endpoint;
use crate::error::{ApiError, ErrorCode};

/// The most alternatives `/v1/completions` gives per token, as OpenAI.
const MOST_COMPLETION_LOGPROBS: usize = 5;

/// How many alternatives each token's log probability comes with, if the
/// request asks for log probabilities at all.
pub fn requested(other: &BTreeMap<String, Value>, endpoint: Endpoint) -> Result<Option<usize>, ApiError> {
    let field = |name: &str| other.get(name).filter(|value| !value.is_null());
    let count = |name: &str, most: usize| match field(name) {
        None => Ok(None),
        Some(value) => match value.as_u64() {
            Some(count) if count as usize <= most => Ok(Some(count as usize)),
            _ => Err(invalid(
                ErrorCode::InvalidLogprobs,
                name,
                format!("{name} must be an integer from 0 to {most}"),
            )),
        },
    };
    if endpoint != Endpoint::Chat {
        return count("logprobs", MOST_COMPLETION_LOGPROBS);
    }
    let wanted = match field("logprobs") {
        None => false,
        Some(Value::Bool(wanted)) => *wanted,
        Some(_) => {
            let message = "logprobs must be true or false".to_owned();
            return Err(invalid(ErrorCode::InvalidLogprobs, "logprobs", message));
        }
    };
    let top = count("top_logprobs", MOST_TOP_LOGPROBS)?;
    match (wanted, top) {
        (true, top) => Ok(Some(top.unwrap_or(0))),
        (false, Some(top)) if top > 0 => Err(invalid(
            ErrorCode::InvalidLogprobs,
            "top_logprobs",
            "top_logprobs needs logprobs: true".to_owned(),
        )),
        (false, _) => Ok(None),
    }
}

/// A completion's pieces of text as they come, each with the log
/// probabilities of the tokens decided with it (when asked for).
#[derive(Debug, Default)]
pub struct Collected {
    pub pieces: Vec<String>,
    pub logprobs: Option<Vec<Vec<TokenLogprob>>>,
    pending: Vec<TokenLogprob>,
}

impl Collected {
    pub fn new(logprobs: bool) -> Self {
        Self { pieces: Vec::new(), logprobs: logprobs.then(Vec::new), pending: Vec::new() }
    }

    pub fn on_logprobs(&mut self, entries: Vec<TokenLogprob>) {
        self.pending.extend(entries);
    }

    /// A piece, with the tokens decided since the last one.
    pub fn on_text(&mut self, piece: String) {
        self.pieces.push(piece);
        if let Some(logprobs) = &mut self.logprobs {
            logprobs.push(std::mem::take(&mut self.pending));
        }
    }

    /// The pieces and their log probabilities; tokens that sent no text
    /// (a stop string's) join the last piece.
    pub fn finish(mut self) -> (Vec<String>, Option<Vec<Vec<TokenLogprob>>>) {
        if let Some(logprobs) = &mut self.logprobs {
            if !self.pending.is_empty() {
                match logprobs.last_mut() {
                    Some(last) => last.append(&mut self.pending),
                    None => {
                        self.pieces.push(String::new());
                        logprobs.push(std::mem::take(&mut self.pending));
                    }
                }
            }
        }
        (self.pieces, self.logprobs)
    }
}

/// Chat's `logprobs` of a choice or a chunk.
pub fn chat_logprobs(entries: &[TokenLogprob]) -> ChatLogprobs {
    let content = entries
        .iter()
        .map(|entry| ChatTokenLogprob {
            token: String::from_utf8_lossy(&entry.bytes).into_owned(),
            logprob: entry.logprob,
            bytes: entry.bytes.clone(),
            top_logprobs: entry
                .top
                .iter()
                .map(|alternative| ChatAlternative {
                    token: String::from_utf8_lossy(&alternative.bytes).into_owned(),
                    logprob: alternative.logprob,
                    bytes: alternative.bytes.clone(),
                })
                .collect(),
        })
        .collect();
    ChatLogprobs { content, refusal: None }
}

/// Completions' `logprobs`, the text starting `offset` characters into
/// the completion.
pub fn text_logprobs(entries: &[TokenLogprob], mut offset: usize) -> TextLogprobs {
    let mut logprobs = TextLogprobs {
        tokens: Vec::with_capacity(entries.len()),
        token_logprobs: Vec::with_capacity(entries.len()),
        top_logprobs: Vec::with_capacity(entries.len()),
        text_offset: Vec::with_capacity(entries.len()),
    };
    for entry in entries {
        let token = String::from_utf8_lossy(&entry.bytes).into_owned();
        logprobs.text_offset.push(offset);
        offset += token.chars().count();
        logprobs.tokens.push(token);
        logprobs.token_logprobs.push(entry.logprob);
        logprobs.top_logprobs.push(
            entry
                .top
                .iter()
                .map(|alternative| {
                    (String::from_utf8_lossy(&alternative.bytes).into_owned(), alternative.logprob)
                })
                .collect(),
        );
    }
    logprobs
}

#[cfg(test)]
mod tests {
    use blaze_actors::inference::Alternative;
    use serde_json::json;

    use super::*;

    fn other(fields: Value) -> BTreeMap<String, Value> {
        fields.as_object().unwrap().clone().into_iter().collect()
    }

    #[test]
    fn chat_and_completions_ask_in_their_own_ways() {
        let chat = |fields| requested(&other(fields), Endpoint::Chat);
        assert_eq!(chat(json!({})).unwrap(), None);
        assert_eq!(chat(json!({"logprobs": true})).unwrap(), Some(0));
        assert_eq!(chat(json!({"logprobs": true, "top_logprobs": 20})).unwrap(), Some(20));
        assert_eq!(chat(json!({"logprobs": false, "top_logprobs": 0})).unwrap(), None);
        for refused in [
            json!({"logprobs": 1}),
            json!({"logprobs": true, "top_logprobs": 21}),
            json!({"logprobs": true, "top_logprobs": -1}),
            json!({"top_logprobs": 3}),
        ] {
            assert!(chat(refused.clone()).is_err(), "{refused}");
        }
        let text = |fields| requested(&other(fields), Endpoint::Completions);
        assert_eq!(text(json!({"logprobs": 3})).unwrap(), Some(3));
        assert_eq!(text(json!({"logprobs": null})).unwrap(), None);
        assert!(text(json!({"logprobs": 6})).is_err());
        assert!(text(json!({"logprobs": true})).is_err());
    }

    fn entry(bytes: &[u8], logprob: f32) -> TokenLogprob {
        TokenLogprob {
            bytes: bytes.to_vec(),
            logprob,
            top: vec![Alternative { bytes: bytes.to_vec(), logprob }],
        }
    }

    #[test]
    fn pieces_keep_the_tokens_decided_with_them() {
        let mut collected = Collected::new(true);
        collected.on_logprobs(vec![entry(b"He", -0.5)]);
        collected.on_text("He".to_owned());
        collected.on_logprobs(vec![entry(b"llo", -0.25)]);
        collected.on_text("llo".to_owned());
        // A stop string's token sends no text.
        collected.on_logprobs(vec![entry(b"!", -1.0)]);
        let (pieces, logprobs) = collected.finish();
        assert_eq!(pieces, ["He", "llo"]);
        let logprobs = logprobs.unwrap();
        assert_eq!((logprobs[0].len(), logprobs[1].len()), (1, 2));
        assert_eq!(Collected::new(false).finish().1, None);
    }

    #[test]
    fn both_shapes_are_openais() {
        let entries = [entry(b"\xc3", -0.5), entry(b"a", -0.25)];
        let chat = serde_json::to_value(chat_logprobs(&entries)).unwrap();
        assert_eq!(chat["refusal"], Value::Null);
        assert_eq!(chat["content"][0]["token"], "\u{fffd}", "a partial character reads as U+FFFD");
        assert_eq!(chat["content"][0]["bytes"], json!([195]));
        assert_eq!(
            chat["content"][1]["top_logprobs"][0],
            json!({"token": "a", "logprob": -0.25, "bytes": [97]})
        );
        let text = serde_json::to_value(text_logprobs(&entries, 0)).unwrap();
        assert_eq!(text["tokens"], json!(["\u{fffd}", "a"]));
        assert_eq!(text["token_logprobs"], json!([-0.5, -0.25]));
        assert_eq!(text["top_logprobs"][1], json!({"a": -0.25}));
        assert_eq!(text["text_offset"], json!([0, 1]));
    }
}
