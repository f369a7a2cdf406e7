//! The model's tokenizer and input limits, and how an input too long for
//! them is cut (truncation, from either end).

use std::path::Path;

use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

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
    /// The same, cutting its inputs to `max_tokens` (the special tokens
    /// kept): keeping the start, and keeping the end.
    keeping_start: tokenizers::Tokenizer,
    keeping_end: tokenizers::Tokenizer,
    /// Inputs too long are cut (keeping their start) unless the request
    /// says otherwise (`models.catalog.<id>.auto_truncate`).
    auto_truncate: bool,
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
        if let Some(model_type) = config.model_type.as_deref().filter(|model_type| *model_type != "bert") {
            return Err(load_error(format!(
                "config.json names the architecture `{model_type}`; the embedding engine runs BERT encoders (model_type bert)"
            )));
        }
        let max_tokens = read("sentence_bert_config.json")
            .ok()
            .and_then(|bytes| serde_json::from_slice::<SentenceBertConfig>(&bytes).ok())
            .map_or(config.max_position_embeddings, |sentence| sentence.max_seq_length)
            .min(config.max_position_embeddings);
        let tokenizer =
            tokenizers::Tokenizer::from_file(directory.join("tokenizer.json")).map_err(load_error)?;
        Self::new(tokenizer, max_tokens, config.vocab_size, config.hidden_size)
    }

    fn new(
        mut tokenizer: tokenizers::Tokenizer,
        max_tokens: usize,
        vocab_size: usize,
        dimensions: usize,
    ) -> Result<Self, EngineError> {
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(load_error)?;
        let cutting = |direction| {
            let mut cutting = tokenizer.clone();
            let params = TruncationParams {
                max_length: max_tokens,
                direction,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            };
            cutting.with_truncation(Some(params)).map_err(load_error)?;
            Ok::<_, EngineError>(cutting)
        };
        let keeping_start = cutting(TruncationDirection::Right)?;
        let keeping_end = cutting(TruncationDirection::Left)?;
        let auto_truncate = false;
        Ok(Self { tokenizer, keeping_start, keeping_end, auto_truncate, max_tokens, vocab_size, dimensions })
    }

    /// The same, cutting inputs too long unless a request says otherwise.
    pub fn with_auto_truncate(self, auto_truncate: bool) -> Self {
        Self { auto_truncate, ..self }
    }

    /// Whether inputs too long are cut when the request does not say.
    pub fn auto_truncate(&self) -> bool {
        self.auto_truncate
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
        Self::new(tokenizer, max_tokens, words.len(), dimensions).expect("a tokenizer")
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
        self.tokenize_with(text, true)
    }

    /// The model's tokens of `text`, cut to at most [`Self::max_tokens`]
    /// with its special tokens kept: its start kept with
    /// [`Truncation::KeepStart`], its end with [`Truncation::KeepEnd`].
    pub fn tokenize_truncated(&self, text: &str, truncation: Truncation) -> Result<Vec<u32>, EngineError> {
        let tokenizer = match truncation {
            Truncation::KeepStart => &self.keeping_start,
            Truncation::KeepEnd => &self.keeping_end,
        };
        let encoding = tokenizer.encode(text, true).map_err(|error| EngineError::Input(error.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids cut to at most [`Self::max_tokens`], as given (they are
    /// the client's: no special token is told apart).
    pub fn truncate_ids(&self, mut tokens: Vec<u32>, truncation: Truncation) -> Vec<u32> {
        if tokens.len() > self.max_tokens {
            match truncation {
                Truncation::KeepStart => tokens.truncate(self.max_tokens),
                Truncation::KeepEnd => {
                    tokens.drain(..tokens.len() - self.max_tokens);
                }
            }
        }
        tokens
    }

    /// The model's tokens of `text`, its special tokens (`[CLS]`, `[SEP]`)
    /// added when `add_special`.
    pub fn tokenize_with(&self, text: &str, add_special: bool) -> Result<Vec<u32>, EngineError> {
        let encoding = self
            .tokenizer
            .encode(text, add_special)
            .map_err(|error| EngineError::Input(error.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `tokens`, special tokens written out; an id outside the
    /// vocabulary is an error naming it.
    pub fn detokenize(&self, tokens: &[u32]) -> Result<String, EngineError> {
        self.check_vocabulary(tokens)?;
        self.tokenizer.decode(tokens, false).map_err(|error| EngineError::Input(error.to_string()))
    }

    /// Each token as the vocabulary writes it (`##ing` for a word's
    /// continuation).
    pub fn token_texts(&self, tokens: &[u32]) -> Result<Vec<String>, EngineError> {
        self.check_vocabulary(tokens)?;
        Ok(tokens.iter().map(|&token| self.tokenizer.id_to_token(token).unwrap_or_default()).collect())
    }

    fn check_vocabulary(&self, tokens: &[u32]) -> Result<(), EngineError> {
        match tokens.iter().find(|&&token| token as usize >= self.vocab_size) {
            Some(token) => Err(EngineError::Input(format!(
                "token id {token} is outside the vocabulary (0 to {})",
                self.vocab_size.saturating_sub(1)
            ))),
            None => Ok(()),
        }
    }

    /// Whether `tokens` can be embedded as they are.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<(), EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::Input("an input has no tokens".to_owned()));
        }
        if tokens.len() > self.max_tokens {
            return Err(EngineError::TooLong { tokens: tokens.len(), limit: self.max_tokens });
        }
        self.check_vocabulary(tokens)
    }
}

/// Which end of an input too long is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Its start (the end is cut: TEI's `truncation_direction` "right").
    #[default]
    KeepStart,
    /// Its end (TEI's "left").
    KeepEnd,
}
