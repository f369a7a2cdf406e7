//! The request bodies of the OpenAI endpoints, and the strict parser that
//! names the field at fault when one does not parse.
//!
//! The chat and completions bodies are read in one pass. serde's
//! `flatten` and `untagged` buffer every value of the body before they
//! look at it (a copy of each string, and a tree of nodes around them),
//! which made a 20 MiB body cost ~34 times its size before admission.
//! These visitors read each field straight into its typed place; only
//! the fields the types do not name are kept, as JSON values, for the
//! validator to judge. Field names in errors still reach the 400's `param`
//! (serde_path_to_error follows the same calls).

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};

mod embeddings;

pub use self::embeddings::{EmbeddingInput, EmbeddingsRequest, EncodingFormat, TruncationDirection};

/// How OpenAI's `stop` is given.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields both endpoints share.
#[derive(Debug, Default)]
pub struct Sampling {
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<usize>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

impl Sampling {
    /// Reads the value of `key` if it is a sampling field; false if not.
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "max_tokens" => self.max_tokens = map.next_value()?,
            "max_completion_tokens" => self.max_completion_tokens = map.next_value()?,
            "temperature" => self.temperature = map.next_value()?,
            "top_p" => self.top_p = map.next_value()?,
            "n" => self.n = map.next_value()?,
            "stop" => self.stop = map.next_value()?,
            "seed" => self.seed = map.next_value()?,
            "presence_penalty" => self.presence_penalty = map.next_value()?,
            "frequency_penalty" => self.frequency_penalty = map.next_value()?,
            "stream" => self.stream = map.next_value::<Option<bool>>()?.unwrap_or(false),
            "stream_options" => self.stream_options = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// A message's content: a string, or a list of parts.
#[derive(Debug)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;

        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Content;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a string or an array of content parts")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Content, E> {
                Ok(Content::Text(text.to_owned()))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Content, E> {
                Ok(Content::Text(text))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }

        deserializer.deserialize_any(ContentVisitor)
    }
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
    /// An assistant message's calls of the request's tools.
    #[serde(default)]
    pub tool_calls: Option<Vec<MessageToolCall>>,
    /// A tool message: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// A call an earlier assistant message made.
#[derive(Debug, Deserialize)]
pub struct MessageToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub function: FunctionCall,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text, as OpenAI gives it.
    pub arguments: String,
}

/// `POST /v1/chat/completions`.
#[derive(Debug)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub sampling: Sampling,
    /// Every other field: accepted only if OpenAI's and harmless.
    pub other: BTreeMap<String, Value>,
}

/// `POST /v1/completions`.
#[derive(Debug)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: String,
    pub sampling: Sampling,
    pub other: BTreeMap<String, Value>,
}

/// The OpenAI fields the validator may accept (with their neutral value)
/// besides the typed ones; any other field is refused by name, so its
/// value is skipped unread rather than built.
const OTHER_FIELDS: &[&str] = &[
    "user",
    "service_tier",
    "reasoning_effort",
    "metadata",
    "store",
    "parallel_tool_calls",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "structured_outputs",
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "modalities",
    "echo",
    "best_of",
    "suffix",
];

/// The largest value one of them may have, as JSON text.
const MOST_OTHER_FIELD_BYTES: usize = 64 << 10;

/// The fields of either body, as read: `body` is `messages` or `prompt`.
struct Fields<T> {
    model: Option<String>,
    body: Option<T>,
    sampling: Sampling,
    other: BTreeMap<String, Value>,
}

struct RequestVisitor<T> {
    body_field: &'static str,
    marker: std::marker::PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for RequestVisitor<T> {
    type Value = Fields<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<T>, A::Error> {
        let mut fields =
            Fields { model: None, body: None, sampling: Sampling::default(), other: BTreeMap::new() };
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            if key == "model" {
                fields.model = Some(map.next_value()?);
            } else if key == self.body_field {
                fields.body = Some(map.next_value()?);
            } else if !fields.sampling.read(&key, &mut map)? {
                let value = if OTHER_FIELDS.contains(&key.as_str()) {
                    // Kept as its text first: a JSON tree costs tens of
                    // times its text, and these fields are small or empty.
                    let raw: Box<RawValue> = map.next_value()?;
                    if raw.get().len() > MOST_OTHER_FIELD_BYTES {
                        return Err(de::Error::custom(format_args!(
                            "`{key}` is larger than {MOST_OTHER_FIELD_BYTES} bytes"
                        )));
                    }
                    serde_json::from_str(raw.get()).map_err(de::Error::custom)?
                } else {
                    // Refused by name later: nothing of it is kept.
                    map.next_value::<IgnoredAny>()?;
                    Value::Null
                };
                fields.other.insert(key, value);
            }
        }
        Ok(fields)
    }
}

/// A whole body: the map read field by field, then the required fields.
struct Body<T> {
    model: String,
    body: T,
    sampling: Sampling,
    other: BTreeMap<String, Value>,
}

fn read<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
    body_field: &'static str,
) -> Result<Body<T>, D::Error> {
    let fields =
        deserializer.deserialize_map(RequestVisitor::<T> { body_field, marker: std::marker::PhantomData })?;
    Ok(Body {
        model: fields.model.ok_or_else(|| de::Error::missing_field("model"))?,
        body: fields.body.ok_or_else(|| de::Error::missing_field(body_field))?,
        sampling: fields.sampling,
        other: fields.other,
    })
}

impl<'de> Deserialize<'de> for ChatRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Body { model, body, sampling, other } = read(deserializer, "messages")?;
        Ok(Self { model, messages: body, sampling, other })
    }
}

impl<'de> Deserialize<'de> for CompletionRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Body { model, body, sampling, other } = read(deserializer, "prompt")?;
        Ok(Self { model, prompt: body, sampling, other })
    }
}

/// `bytes` as a `T`, or the 400 that names the field at fault. A field of
/// the body that `T` skips unread (serde_ignored reports each one) is
/// unknown, and refused by name as OpenAI refuses it.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut unknown = None;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_ignored::deserialize(&mut deserializer, |path| {
        if let serde_ignored::Path::Map { parent: serde_ignored::Path::Root, key } = path {
            unknown.get_or_insert_with(|| key.clone());
        }
    });
    let value = parsed
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|error| describe::<T>(bytes, &error))?;
    match unknown {
        Some(field) => Err(ApiError::bad_request(
            ErrorCode::UnknownParameter,
            format!("Unrecognized request argument supplied: {field}"),
        )
        .with_param(field)),
        None => Ok(value),
    }
}

/// The 400 for a body that did not parse: where, and what was wrong.
fn describe<T: DeserializeOwned>(bytes: &[u8], error: &serde_json::Error) -> ApiError {
    if !error.is_data() {
        return ApiError::bad_request(
            ErrorCode::InvalidJson,
            format!("The request body is not valid JSON: {error}"),
        );
    }
    let path =
        match serde_path_to_error::deserialize::<_, T>(&mut serde_json::Deserializer::from_slice(bytes)) {
            Err(located) => located.path().to_string(),
            Ok(_) => ".".to_owned(),
        };
    let message = error.to_string();
    // serde_json's message ends with where in the text; the path says it better.
    let problem = message.split(" at line ").next().unwrap_or(&message);
    if path == "." {
        return ApiError::bad_request(
            ErrorCode::InvalidRequestBody,
            format!("The request body is invalid: {problem}"),
        );
    }
    ApiError::bad_request(ErrorCode::InvalidRequestBody, format!("`{path}`: {problem}")).with_param(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_land_in_their_places_and_the_rest_is_kept() {
        let request: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"user","content":[{"type":"text","text":"a"}]}],
                "temperature":0,"stream":true,"stop":["x"],"user":"u1"}"#,
        )
        .unwrap();
        assert_eq!(request.model, "m");
        assert!(matches!(&request.messages[0].content, Some(Content::Text(text)) if text == "hi"));
        assert!(matches!(&request.messages[1].content, Some(Content::Parts(parts)) if parts.len() == 1));
        assert_eq!((request.sampling.temperature, request.sampling.stream), (Some(0.0), true));
        assert!(matches!(request.sampling.stop, Some(Stop::Many(_))));
        assert_eq!(request.other.get("user"), Some(&Value::String("u1".to_owned())));
        let unknown: ChatRequest =
            serde_json::from_str(r#"{"model":"m","messages":[],"padding":[[1,2],{"a":"b"}]}"#).unwrap();
        assert_eq!(unknown.other.get("padding"), Some(&Value::Null), "named, not built");
        // The cache warming file's lines come as values.
        let warmed: ChatRequest = serde_json::from_value(serde_json::json!(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": "u2", "seed": 1}
        ))
        .unwrap();
        assert_eq!(
            (warmed.other.get("user"), warmed.sampling.seed),
            (Some(&Value::String("u2".to_owned())), Some(1))
        );
        let completion: CompletionRequest =
            serde_json::from_str(r#"{"prompt":"p","model":"m","max_tokens":3,"stream":null}"#).unwrap();
        assert_eq!((completion.prompt.as_str(), completion.sampling.max_tokens), ("p", Some(3)));
    }

    #[test]
    fn a_field_the_body_skips_is_refused_by_name() {
        let refused = format!(
            "{:?}",
            parse::<EmbeddingsRequest>(br#"{"input":"a","model":"m","extra":1}"#).unwrap_err()
        );
        assert!(
            refused.contains("UnknownParameter") && refused.contains("param: Some(\"extra\")"),
            "{refused}"
        );
        let refused = format!(
            "{:?}",
            parse::<ChatRequest>(br#"{"model":"m","messages":[],"padding":[1]}"#).unwrap_err()
        );
        assert!(refused.contains("UnknownParameter") && refused.contains("padding"), "{refused}");
        // Inside a message, fields are OpenAI's to add (name, tool_call_id).
        let named =
            parse::<ChatRequest>(br#"{"model":"m","messages":[{"role":"user","content":"hi","name":"x"}]}"#);
        assert!(named.is_ok());
        let trailing =
            format!("{:?}", parse::<EmbeddingsRequest>(br#"{"input":"a","model":"m"} x"#).unwrap_err());
        assert!(trailing.contains("InvalidJson"), "{trailing}");
    }

    #[test]
    fn bad_bodies_name_their_fault() {
        let missing = serde_json::from_str::<ChatRequest>(r#"{"messages":[]}"#).unwrap_err();
        assert!(missing.to_string().contains("missing field `model`"), "{missing}");
        let twice =
            serde_json::from_str::<ChatRequest>(r#"{"model":"a","model":"b","messages":[]}"#).unwrap_err();
        assert!(twice.to_string().contains("duplicate field `model`"), "{twice}");
        let wrong =
            serde_json::from_str::<ChatRequest>(r#"{"model":"a","messages":[],"top_p":"x"}"#).unwrap_err();
        assert!(wrong.to_string().contains("expected f32"), "{wrong}");
        let content =
            serde_json::from_str::<ChatRequest>(r#"{"model":"a","messages":[{"role":"user","content":5}]}"#)
                .unwrap_err();
        assert!(content.to_string().contains("a string or an array of content parts"), "{content}");
        let tools = format!(r#"{{"model":"a","messages":[],"tools":[{}0]}}"#, "0,".repeat(40_000));
        let large = serde_json::from_str::<ChatRequest>(&tools).unwrap_err();
        assert!(large.to_string().contains("`tools` is larger than 65536 bytes"), "{large}");
        let array = serde_json::from_str::<ChatRequest>(r#"[1]"#).unwrap_err();
        assert!(array.to_string().contains("a JSON object"), "{array}");
    }
}
