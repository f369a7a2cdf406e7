//! The model's tokenizer and input limits.

use std::path::Path;

use serde::Deserialize;

use super::{load_error, BertConfig};
use crate::inference::engine::EngineError;

/// sentence-transformers' own limit, when the model ships it.
#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

/// The model's tokenizer and input limits; shared by the request path (to
/// count and check tokens at admission) and the engine.
pub struct BertTokenizer {
    tokenizer: tokenizers::Tokenizer,
    max_tokens: usize,
    vocab_size: usize,
    dimensions: usize,
}

impl BertTokenizer {
    pub fn load(directory: &Path) -> Result<Self, EngineError> {
        let read = |name: &str| {
            std::fs::read(directory.join(name)).map_err(|error| load_error(format!("{name}: {error}")))
        };
        let config: BertConfig = serde_json::from_slice(&read("config.json")?).map_err(load_error)?;
        let max_tokens = read("sentence_bert_config.json")
            .ok()
            .and_then(|bytes| serde_json::from_slice::<SentenceBertConfig>(&bytes).ok())
            .map_or(config.max_position_embeddings, |sentence| sentence.max_seq_length)
            .min(config.max_position_embeddings);
        let mut tokenizer =
            tokenizers::Tokenizer::from_file(directory.join("tokenizer.json")).map_err(load_error)?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(load_error)?;
        Ok(Self { tokenizer, max_tokens, vocab_size: config.vocab_size, dimensions: config.hidden_size })
    }

    /// A word-level tokenizer of `words` (one token each, in order; any
    /// other word is the first), for tests of the pool without a model.
    #[cfg(test)]
    pub(crate) fn of_words(words: &[&str], dimensions: usize, max_tokens: usize) -> Self {
        let vocab: serde_json::Map<String, serde_json::Value> =
            words.iter().enumerate().map(|(index, word)| ((*word).to_owned(), index.into())).collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": words[0]},
        });
        let tokenizer: tokenizers::Tokenizer = json.to_string().parse().expect("a word-level tokenizer");
        Self { tokenizer, max_tokens, vocab_size: words.len(), dimensions }
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Most tokens per input, special tokens included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The model's tokens of `text`, with its special tokens.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let encoding =
            self.tokenizer.encode(text, true).map_err(|error| EngineError::Input(error.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Whether `tokens` can be embedded as they are.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<(), EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::Input("an input has no tokens".to_owned()));
        }
        if tokens.len() > self.max_tokens {
            return Err(EngineError::TooLong { tokens: tokens.len(), limit: self.max_tokens });
        }
        match tokens.iter().find(|&&token| token as usize >= self.vocab_size) {
            Some(token) => Err(EngineError::Input(format!(
                "token id {token} is outside the vocabulary (0 to {})",
                self.vocab_size - 1
            ))),
            None => Ok(()),
        }
    }
}
