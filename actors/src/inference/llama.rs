//! The chat engine: a GGUF model through llama.cpp (`llama-cpp-2`, built
//! from source), with the chat template and tokenizer of the GGUF itself.
//!
//! The model is shared (read-only) between the request path, which renders
//! and counts prompts, and the worker threads, each with its own context.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::engine::EngineError;

/// llama.cpp's process-wide state, initialized once.
static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

fn backend() -> Result<&'static LlamaBackend, EngineError> {
    let backend = BACKEND.get_or_init(|| {
        let mut backend = LlamaBackend::init().map_err(|error| error.to_string())?;
        backend.void_logs();
        Ok(backend)
    });
    backend.as_ref().map_err(|error| EngineError::Load(error.clone()))
}

/// How to sample one completion.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: usize,
    /// 0: greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// A loaded chat model.
pub struct ChatModel {
    model: LlamaModel,
    template: LlamaChatTemplate,
    context_length: usize,
}

impl ChatModel {
    /// Loads a `.gguf` file; the context window is the model's trained one,
    /// capped at `max_context`.
    pub fn load(path: &Path, max_context: usize) -> Result<Arc<Self>, EngineError> {
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|error| EngineError::Load(error.to_string()))?;
        let template = model
            .chat_template(None)
            .map_err(|error| EngineError::Load(format!("the GGUF has no chat template: {error}")))?;
        let context_length = (model.n_ctx_train() as usize).min(max_context).max(16);
        Ok(Arc::new(Self { model, template, context_length }))
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The prompt of a conversation, by the model's own chat template, with
    /// the assistant's turn opened.
    pub fn render(&self, messages: &[(String, String)]) -> Result<String, EngineError> {
        let messages = messages
            .iter()
            .map(|(role, content)| LlamaChatMessage::new(role.clone(), content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| EngineError::Input(format!("a message holds a NUL byte: {error}")))?;
        self.model
            .apply_chat_template(&self.template, &messages, true)
            .map_err(|error| EngineError::Input(format!("cannot apply the chat template: {error}")))
    }

    /// The model's tokens of `text`; special tokens in the text are parsed
    /// (the chat template writes them), a BOS is added if the model wants one.
    pub fn tokenize(&self, text: &str, add_special: bool) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), add_special, true)
            .into_iter()
            .map(|token| token.0 as u32)
            .collect()
    }

    /// Checks that the prompt and the completion fit the context window.
    pub fn check_window(&self, prompt_tokens: usize, max_tokens: usize) -> Result<(), EngineError> {
        if prompt_tokens + max_tokens > self.context_length {
            return Err(EngineError::TooLong {
                tokens: prompt_tokens + max_tokens,
                limit: self.context_length,
            });
        }
        Ok(())
    }

    /// A context for one worker: `threads` compute threads.
    pub fn new_context(&self, threads: usize) -> Result<LlamaContext<'_>, EngineError> {
        let length = NonZeroU32::new(self.context_length as u32);
        let threads = threads.max(1) as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(length)
            .with_n_batch(self.context_length as u32)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        self.model.new_context(backend()?, params).map_err(|error| EngineError::Load(error.to_string()))
    }

    /// Generates a completion of `prompt` in `context`, calling `emit` with
    /// each piece of text as it is decided (never a part of a stop string,
    /// never half a UTF-8 character). `emit` returns false to cancel.
    /// Returns why it stopped and how many tokens it generated.
    pub fn generate(
        &self,
        context: &mut LlamaContext<'_>,
        prompt: &[u32],
        params: &SamplingParams,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(FinishReason, usize), EngineError> {
        self.check_window(prompt.len(), params.max_tokens)?;
        let decode_error =
            |error: llama_cpp_2::DecodeError| EngineError::Input(format!("decode failed: {error}"));
        context.clear_kv_cache();
        let mut batch = LlamaBatch::new(prompt.len().max(1), 1);
        for (position, &token) in prompt.iter().enumerate() {
            let last = position + 1 == prompt.len();
            batch
                .add(LlamaToken(token as i32), position as i32, &[0], last)
                .map_err(|error| EngineError::Input(error.to_string()))?;
        }
        context.decode(&mut batch).map_err(decode_error)?;
        let mut sampler = self.sampler(params);
        let mut text = StopScanner::new(&params.stop);
        let mut utf8 = Vec::new();
        let mut logits_index = batch.n_tokens() - 1;
        for (generated, position) in (0..params.max_tokens).zip(prompt.len()..) {
            let token = sampler.sample(context, logits_index);
            sampler.accept(token);
            if self.model.vocab().is_eog(token) {
                emit_all(&mut text, emit);
                return Ok((FinishReason::Stop, generated));
            }
            utf8.extend(self.model.vocab().token_to_piece(token, false, None));
            let complete = complete_utf8(&mut utf8);
            match text.push(&complete) {
                Scan::Continue(ready) => {
                    if !ready.is_empty() && !emit(&ready) {
                        return Ok((FinishReason::Stop, generated + 1));
                    }
                }
                Scan::Stopped(ready) => {
                    if !ready.is_empty() {
                        emit(&ready);
                    }
                    return Ok((FinishReason::Stop, generated + 1));
                }
            }
            batch.clear();
            batch
                .add(token, position as i32, &[0], true)
                .map_err(|error| EngineError::Input(error.to_string()))?;
            logits_index = 0;
            context.decode(&mut batch).map_err(decode_error)?;
        }
        emit_all(&mut text, emit);
        Ok((FinishReason::Length, params.max_tokens))
    }

    fn sampler(&self, params: &SamplingParams) -> LlamaSampler {
        let mut chain = Vec::new();
        if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
            let vocabulary = self.model.n_vocab();
            chain.push(LlamaSampler::penalties(
                vocabulary,
                -1,
                1.0,
                params.frequency_penalty,
                params.presence_penalty,
            ));
        }
        if params.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            chain.push(LlamaSampler::top_p(params.top_p, 1));
            chain.push(LlamaSampler::temp(params.temperature));
            chain.push(LlamaSampler::dist(params.seed));
        }
        LlamaSampler::chain_simple(chain)
    }
}

fn emit_all(text: &mut StopScanner, emit: &mut dyn FnMut(&str) -> bool) {
    let rest = text.finish();
    if !rest.is_empty() {
        emit(&rest);
    }
}

/// Takes the longest valid UTF-8 prefix out of `bytes`, leaving a partial
/// character for the next token.
fn complete_utf8(bytes: &mut Vec<u8>) -> String {
    let valid = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(error) if error.error_len().is_none() => error.valid_up_to(),
        // Invalid bytes (not just incomplete): replace them rather than stall.
        Err(_) => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            bytes.clear();
            return text;
        }
    };
    let rest = bytes.split_off(valid);
    String::from_utf8(std::mem::replace(bytes, rest)).unwrap_or_default()
}

enum Scan {
    /// Text safe to send now.
    Continue(String),
    /// A stop string was found; the text before it.
    Stopped(String),
}

/// Holds back the end of the text that could still become a stop string.
struct StopScanner<'a> {
    stops: &'a [String],
    pending: String,
}

impl<'a> StopScanner<'a> {
    fn new(stops: &'a [String]) -> Self {
        Self { stops, pending: String::new() }
    }

    fn push(&mut self, piece: &str) -> Scan {
        self.pending.push_str(piece);
        let found = self.stops.iter().filter_map(|stop| self.pending.find(stop.as_str())).min();
        if let Some(at) = found {
            return Scan::Stopped(self.pending[..at].to_owned());
        }
        let keep =
            self.stops.iter().map(|stop| longest_suffix_prefix(&self.pending, stop)).max().unwrap_or(0);
        let cut = self.pending.len() - keep;
        let ready = self.pending[..cut].to_owned();
        self.pending.drain(..cut);
        Scan::Continue(ready)
    }

    fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// The length of the longest end of `text` that is a start of `stop`, at a
/// character boundary.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&length| {
            text.is_char_boundary(text.len() - length) && stop.starts_with(&text[text.len() - length..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_held_back_across_pieces_and_cut() {
        let stops = vec!["END".to_owned()];
        let mut scanner = StopScanner::new(&stops);
        assert!(matches!(scanner.push("hello E"), Scan::Continue(text) if text == "hello "));
        assert!(matches!(scanner.push("N"), Scan::Continue(text) if text.is_empty()));
        assert!(matches!(scanner.push("Dgame"), Scan::Stopped(text) if text.is_empty()));
        let mut scanner = StopScanner::new(&stops);
        assert!(matches!(scanner.push("E"), Scan::Continue(text) if text.is_empty()));
        assert!(matches!(scanner.push("x"), Scan::Continue(text) if text == "Ex"));
        assert_eq!(scanner.finish(), "");
    }

    #[test]
    fn partial_utf8_waits_for_the_rest_of_the_character() {
        let mut bytes = "é".as_bytes()[..1].to_vec();
        assert_eq!(complete_utf8(&mut bytes), "");
        bytes.extend(&"é".as_bytes()[1..]);
        assert_eq!(complete_utf8(&mut bytes), "é");
        assert!(bytes.is_empty());
    }
}
