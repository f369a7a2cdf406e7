//! What an inference engine offers, one trait per model kind, so the
//! workers and the API do not depend on how a model computes.

use super::chat::{FinishReason, Grammar, Progress, SamplingParams, TokenLogprob};

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
    /// Bytes of memory the loaded engine holds (its weights).
    fn memory_bytes(&self) -> u64 {
        0
    }
    /// The name of the kernels it computes on, for the start-up log.
    fn kernels(&self) -> &'static str {
        "none"
    }
}

/// Most sequences one chat decoder holds at once.
pub const MAX_SLOTS: usize = 64;

/// A chat model, shared read-only by the request path, which sizes and
/// tokenizes prompts with it, and the pool's worker threads, each of which
/// generates with a [`ChatDecoder`] of its own.
pub trait ChatEngine: Send + Sync + 'static {
    /// One worker's decoder; it borrows the model.
    type Decoder<'a>: ChatDecoder
    where
        Self: 'a;

    /// Tokens of one sequence's window: its prompt and completion together.
    fn context_length(&self) -> usize;
    /// The most bytes of text that can fit the window whatever its tokens:
    /// a longer text is refused before it is rendered or tokenized.
    fn most_text_bytes(&self) -> usize;
    /// The prompt tokens of a conversation, `(role, text)` turns through
    /// the model's chat template, with the assistant's turn opened, and
    /// the `tools` it may call (OpenAI's definitions) rendered into it.
    fn prompt_tokens(
        &self,
        turns: &[(String, String)],
        tools: &[serde_json::Value],
    ) -> Result<Vec<u32>, EngineError>;
    /// The model's tokens of `text`; `add_special` adds what the model
    /// wants at the start of a prompt (a BOS).
    fn tokenize(&self, text: &str, add_special: bool) -> Vec<u32>;
    /// Whether a prompt and a completion of these lengths fit the window.
    fn check_window(&self, prompt_tokens: usize, max_tokens: usize) -> Result<(), EngineError>;
    /// Whether the engine can constrain a completion to `grammar`.
    fn check_grammar(&self, grammar: &Grammar) -> Result<(), EngineError>;
    /// A decoder with `threads` compute threads, holding up to `slots`
    /// sequences at once (clamped to 1..=[`MAX_SLOTS`]).
    fn decoder(&self, threads: usize, slots: usize) -> Result<Self::Decoder<'_>, EngineError>;
    /// Bytes of weights the model holds, shared by its decoders.
    fn weights_bytes(&self) -> u64 {
        0
    }
}

/// Several completions generated together, one step at a time: a new one
/// starts in a free slot between steps, and a finished one is released.
pub trait ChatDecoder {
    type Sequence: ChatSequence;

    /// Sequences it can hold at once.
    fn slots(&self) -> usize;
    /// Starts a completion of `prompt` in `slot` (one no other live
    /// sequence uses); it is read in the next steps.
    fn start(
        &mut self,
        slot: usize,
        prompt: &[u32],
        params: &SamplingParams,
    ) -> Result<Self::Sequence, EngineError>;
    /// Starts one completion of `prompt` per entry of `params`, the first in
    /// `slots[0]` and so on (as many slots as params): the choices of one
    /// request. An engine that can share the prompt reads it once for all
    /// of them; this one starts each alone. On an error none is started.
    fn start_choices(
        &mut self,
        slots: &[usize],
        prompt: &[u32],
        params: &[SamplingParams],
    ) -> Result<Vec<Self::Sequence>, EngineError> {
        let mut started = Vec::with_capacity(params.len());
        for (&slot, params) in slots.iter().zip(params) {
            match self.start(slot, prompt, params) {
                Ok(sequence) => started.push(sequence),
                Err(error) => {
                    for sequence in &mut started {
                        self.release(sequence);
                    }
                    return Err(error);
                }
            }
        }
        Ok(started)
    }

    /// Frees a sequence's slot (it finished or was cancelled).
    fn release(&mut self, sequence: &mut Self::Sequence);
    /// Whether a released sequence's slot keeps what its cache holds, so
    /// a prompt that starts the same way reads only the rest (prefix
    /// reuse). An engine without it ignores this.
    fn keep_prompts(&mut self, _keep: bool) {}
    /// Bytes its cache holds, allocated whole when it was made.
    fn cache_bytes(&self) -> u64 {
        0
    }
    /// How many tokens from the start of `prompt` the free slot `slot`
    /// holds already and [`ChatDecoder::start`] would not read again.
    fn reusable(&self, _slot: usize, _prompt: &[u32]) -> usize {
        0
    }
    /// Feeds each sequence its next input; what each one did, in order. On
    /// an error, the sequences it fed hold none of this step's tokens.
    fn step(&mut self, sequences: &mut [&mut Self::Sequence]) -> Result<Vec<Progress>, EngineError>;

    /// Generates one completion alone, calling `emit` with each piece of
    /// text as it is decided (never a part of a stop string, never half a
    /// UTF-8 character); `emit` returns false to cancel. Returns why it
    /// stopped and how many tokens it generated.
    fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(FinishReason, usize), EngineError> {
        let mut sequence = self.start(0, prompt, params)?;
        let outcome = loop {
            match self.step(&mut [&mut sequence]) {
                Err(error) => break Err(error),
                Ok(progress) => match progress.into_iter().next() {
                    Some(Progress::Text(text)) => {
                        if !text.is_empty() && !emit(&text) {
                            break Ok((FinishReason::Stop, sequence.completion_tokens()));
                        }
                    }
                    Some(Progress::Finished { text, reason, completion_tokens }) => {
                        if !text.is_empty() {
                            emit(&text);
                        }
                        break Ok((reason, completion_tokens));
                    }
                    Some(Progress::Reading) | None => {}
                },
            }
        };
        self.release(&mut sequence);
        outcome
    }
}

/// One completion in a decoder.
pub trait ChatSequence {
    /// The decoder slot it runs in.
    fn slot(&self) -> usize;
    fn prompt_tokens(&self) -> usize;
    fn completion_tokens(&self) -> usize;
    /// Whether its prompt is still being read (a prefill step), as opposed
    /// to one token fed per step.
    fn is_reading(&self) -> bool;
    /// Prompt tokens it did not read because its slot's cache held them.
    fn cached_tokens(&self) -> usize {
        0
    }
    /// The log probabilities of the tokens decided since the last call,
    /// when its parameters asked for them.
    fn take_logprobs(&mut self) -> Vec<TokenLogprob> {
        Vec::new()
    }
}
