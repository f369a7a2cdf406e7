//! What an inference engine offers, one trait per model kind, so the
//! workers and the API do not depend on how a model computes.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load the model: {0}")]
    Load(String),
    #[error("{0}")]
    Input(String),
    #[error("the input has {tokens} tokens; this model takes at most {limit}")]
    TooLong { tokens: usize, limit: usize },
}

/// A text embedding model.
pub trait EmbeddingEngine: Send {
    fn dimensions(&self) -> usize;
    /// Most tokens per input, special tokens included.
    fn max_tokens(&self) -> usize;
    /// The model's tokens of `text`, with its special tokens.
    fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError>;
    /// Whether `tokens` can be embedded as they are.
    fn check_tokens(&self, tokens: &[u32]) -> Result<(), EngineError>;
    /// One normalized vector per input, in order.
    fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EngineError>;
}
