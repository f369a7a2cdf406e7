//! The `/v1/embeddings` body. Its `input` takes four shapes; it is read by
//! visitors of its own, so that any other shape becomes `Invalid` for the
//! validator to refuse with the shapes it takes, instead of an error
//! inside serde whose text would have to be matched.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// `POST /v1/embeddings`.
/// A field it does not name is refused by [`super::parse`].
#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub input: EmbeddingInput,
    pub model: String,
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    pub dimensions: Option<usize>,
    #[allow(dead_code)]
    user: Option<String>,
    /// Blaze's extension, as TEI's: an input longer than the model takes
    /// is cut to fit rather than refused. Unset: the model's
    /// `auto_truncate`.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Which end is cut (TEI's): `right` (the default) keeps the start.
    #[serde(default)]
    pub truncation_direction: Option<TruncationDirection>,
}

/// TEI's `truncation_direction`, in either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TruncationDirection {
    #[serde(rename = "right", alias = "Right")]
    Right,
    #[serde(rename = "left", alias = "Left")]
    Left,
}

/// What `/v1/embeddings` embeds. Any other shape is read as `Invalid`
/// (and refused by the validator with the shapes it takes), rather than
/// failing inside serde where only its message would tell what went wrong.
#[derive(Debug)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
    Invalid,
}

/// One element of an input array.
enum InputItem {
    Text(String),
    Token(u32),
    Tokens(Vec<u32>),
    Invalid,
}

/// Reads any JSON value as an `InputItem`; other shapes are skipped and
/// `Invalid`.
struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = InputItem;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a string, a token id or an array of token ids")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<InputItem, E> {
        Ok(InputItem::Text(text.to_owned()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<InputItem, E> {
        Ok(InputItem::Text(text))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<InputItem, E> {
        Ok(u32::try_from(value).map_or(InputItem::Invalid, InputItem::Token))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<InputItem, E> {
        Ok(u32::try_from(value).map_or(InputItem::Invalid, InputItem::Token))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<InputItem, E> {
        Ok(InputItem::Invalid)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<InputItem, E> {
        Ok(InputItem::Invalid)
    }

    fn visit_unit<E: de::Error>(self) -> Result<InputItem, E> {
        Ok(InputItem::Invalid)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InputItem, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(InputItem::Invalid)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<InputItem, A::Error> {
        let mut tokens = Vec::new();
        let mut valid = true;
        while let Some(item) = seq.next_element::<InputItem>()? {
            match item {
                InputItem::Token(token) if valid => tokens.push(token),
                _ => valid = false,
            }
        }
        Ok(if valid { InputItem::Tokens(tokens) } else { InputItem::Invalid })
    }
}

impl<'de> Deserialize<'de> for InputItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ItemVisitor)
    }
}

/// The input's array, its kind decided by its first element: every element
/// must be of that kind.
struct InputVisitor;

impl<'de> Visitor<'de> for InputVisitor {
    type Value = EmbeddingInput;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a string or an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EmbeddingInput, A::Error> {
        let mut input = match seq.next_element::<InputItem>()? {
            None => return Ok(EmbeddingInput::Texts(Vec::new())),
            Some(InputItem::Text(text)) => EmbeddingInput::Texts(vec![text]),
            Some(InputItem::Token(token)) => EmbeddingInput::Tokens(vec![token]),
            Some(InputItem::Tokens(tokens)) => EmbeddingInput::TokenLists(vec![tokens]),
            Some(InputItem::Invalid) => EmbeddingInput::Invalid,
        };
        while let Some(item) = seq.next_element::<InputItem>()? {
            match (&mut input, item) {
                (EmbeddingInput::Texts(texts), InputItem::Text(text)) => texts.push(text),
                (EmbeddingInput::Tokens(tokens), InputItem::Token(token)) => tokens.push(token),
                (EmbeddingInput::TokenLists(lists), InputItem::Tokens(tokens)) => lists.push(tokens),
                _ => input = EmbeddingInput::Invalid,
            }
        }
        Ok(input)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<EmbeddingInput, E> {
        Ok(EmbeddingInput::Text(text.to_owned()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<EmbeddingInput, E> {
        Ok(EmbeddingInput::Text(text))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<EmbeddingInput, E> {
        Ok(EmbeddingInput::Invalid)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<EmbeddingInput, E> {
        Ok(EmbeddingInput::Invalid)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<EmbeddingInput, E> {
        Ok(EmbeddingInput::Invalid)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<EmbeddingInput, E> {
        Ok(EmbeddingInput::Invalid)
    }

    fn visit_unit<E: de::Error>(self) -> Result<EmbeddingInput, E> {
        Ok(EmbeddingInput::Invalid)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EmbeddingInput, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(EmbeddingInput::Invalid)
    }
}

impl<'de> Deserialize<'de> for EmbeddingInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(InputVisitor)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_inputs_of_every_shape_are_read_and_others_are_invalid() {
        let input = |json: &str| {
            serde_json::from_str::<EmbeddingsRequest>(&format!(r#"{{"model":"m","input":{json}}}"#))
                .unwrap()
                .input
        };
        assert!(matches!(input(r#""a""#), EmbeddingInput::Text(text) if text == "a"));
        assert!(matches!(input(r#"["a","b"]"#), EmbeddingInput::Texts(texts) if texts.len() == 2));
        assert!(matches!(input("[1,2,3]"), EmbeddingInput::Tokens(tokens) if tokens == [1, 2, 3]));
        assert!(matches!(input("[[1],[2,3]]"), EmbeddingInput::TokenLists(lists) if lists.len() == 2));
        assert!(matches!(input("[]"), EmbeddingInput::Texts(texts) if texts.is_empty()));
        for invalid in [
            r#"{"text":"x"}"#,
            "5",
            "true",
            "null",
            r#"["a",1]"#,
            "[1,-1]",
            r#"[[1],["a"]]"#,
            "[1.5]",
            "[4294967296]",
        ] {
            assert!(matches!(input(invalid), EmbeddingInput::Invalid), "{invalid}");
        }
    }
}
