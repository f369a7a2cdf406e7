//! The llama.cpp model as a [`ChatEngine`]: the traits the chat pool is
//! written against, each method the inherent one of the same name (kept
//! inherent so that callers need not import the traits).

use super::decoder::{Decoder, Sequence};
use super::model::ChatModel;
use crate::inference::chat::completion::{Progress, SamplingParams};
use crate::inference::chat::grammar::Grammar;
use crate::inference::engine::{ChatDecoder, ChatEngine, ChatSequence, EngineError};

impl ChatEngine for ChatModel {
    type Decoder<'a> = Decoder<'a>;

    fn context_length(&self) -> usize {
        ChatModel::context_length(self)
    }

    fn most_text_bytes(&self) -> usize {
        ChatModel::most_text_bytes(self)
    }

    fn prompt_tokens(
        &self,
        turns: &[(String, String)],
        tools: &[serde_json::Value],
    ) -> Result<Vec<u32>, EngineError> {
        ChatModel::prompt_tokens(self, turns, tools)
    }

    fn tokenize(&self, text: &str, add_special: bool) -> Vec<u32> {
        ChatModel::tokenize(self, text, add_special)
    }

    fn check_window(&self, prompt_tokens: usize, max_tokens: usize) -> Result<(), EngineError> {
        ChatModel::check_window(self, prompt_tokens, max_tokens)
    }

    fn check_grammar(&self, grammar: &Grammar) -> Result<(), EngineError> {
        ChatModel::check_grammar(self, grammar)
    }

    fn decoder(&self, threads: usize, slots: usize) -> Result<Decoder<'_>, EngineError> {
        ChatModel::decoder(self, threads, slots)
    }

    fn weights_bytes(&self) -> u64 {
        ChatModel::weights_bytes(self)
    }
}

impl ChatDecoder for Decoder<'_> {
    type Sequence = Sequence;

    fn slots(&self) -> usize {
        Decoder::slots(self)
    }

    fn start(
        &mut self,
        slot: usize,
        prompt: &[u32],
        params: &SamplingParams,
    ) -> Result<Sequence, EngineError> {
        Decoder::start(self, slot, prompt, params)
    }

    fn start_choices(
        &mut self,
        slots: &[usize],
        prompt: &[u32],
        params: &[SamplingParams],
    ) -> Result<Vec<Sequence>, EngineError> {
        Decoder::start_choices(self, slots, prompt, params)
    }

    fn release(&mut self, sequence: &mut Sequence) {
        Decoder::release(self, sequence)
    }

    fn keep_prompts(&mut self, keep: bool) {
        Decoder::keep_prompts(self, keep)
    }

    fn cache_bytes(&self) -> u64 {
        Decoder::cache_bytes(self)
    }

    fn reusable(&self, slot: usize, prompt: &[u32]) -> usize {
        Decoder::reusable(self, slot, prompt)
    }

    fn step(&mut self, sequences: &mut [&mut Sequence]) -> Result<Vec<Progress>, EngineError> {
        Decoder::step(self, sequences)
    }
}

impl ChatSequence for Sequence {
    fn slot(&self) -> usize {
        Sequence::slot(self)
    }

    fn prompt_tokens(&self) -> usize {
        Sequence::prompt_tokens(self)
    }

    fn completion_tokens(&self) -> usize {
        Sequence::completion_tokens(self)
    }

    fn is_reading(&self) -> bool {
        Sequence::is_reading(self)
    }

    fn cached_tokens(&self) -> usize {
        Sequence::cached_tokens(self)
    }

    fn take_logprobs(&mut self) -> Vec<crate::inference::chat::completion::TokenLogprob> {
        Sequence::take_logprobs(self)
    }
}
