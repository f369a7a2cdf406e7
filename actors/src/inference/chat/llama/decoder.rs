//! The batching decoder: one llama.cpp context running several sequences
//! together, each in its own part of the KV cache. The choices of one
//! request share their prompt: one of them reads it, and its part of the
//! cache is copied to the others' when it is read.
//!
//! Prefix reuse: a finished sequence's cells stay in its slot's part of
//! the cache, with the tokens they hold, until the slot is used again. A
//! prompt started in that slot skips the tokens it shares with them from
//! the start (the next turn of a conversation shares all of its history),
//! and reads only the rest. No memory is added: each slot's part of the
//! cache is allocated once, kept or not.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::backend;
use super::model::ChatModel;
use super::sampling::{first_argmax, StopScanner};
use crate::inference::chat::completion::{FinishReason, Progress, SamplingParams, TokenLogprob};
use crate::inference::engine::{ChatDecoder, EngineError, MAX_SLOTS};

/// Most tokens fed to the model in one step: a long prompt is read in
/// chunks of this size, so the sequences already generating beside it wait
/// at most one chunk for their next token.
const STEP_TOKENS: usize = 512;

/// One completion in a decoder: its tokens so far (the prompt, then what was
/// generated) and how many of them its part of the KV cache holds.
pub struct Sequence {
    slot: i32,
    pub(super) tokens: Vec<LlamaToken>,
    /// How many of `tokens` (from the start) are in the KV cache; the rest
    /// are fed in the next steps.
    cached: usize,
    prompt_tokens: usize,
    pub(super) max_tokens: usize,
    pub(super) sampler: LlamaSampler,
    /// What the text must match: llama.cpp's grammar sampler, apart from
    /// the chain so that the chain's choice can be checked first.
    pub(super) grammar: Option<LlamaSampler>,
    /// How many alternatives each token's log probability comes with, if
    /// they are asked for; and those of the tokens not yet delivered.
    pub(super) top_logprobs: Option<usize>,
    pub(super) logprobs: Vec<TokenLogprob>,
    /// Greedy without penalties: the token is the argmax of the logits,
    /// read in place instead of through the sampler's copy of them.
    pub(super) argmax: bool,
    pub(super) text: StopScanner,
    pub(super) utf8: Vec<u8>,
    /// Where this sequence's logits are in the last batch, if it has some.
    logits: Option<i32>,
    /// The sequences started together as choices of one prompt share a
    /// group; one of them reads the prompt, the others await it.
    group: u64,
    awaits_prompt: bool,
    /// Prompt tokens found in the slot's cache when it started.
    reused: usize,
}

impl Sequence {
    pub fn slot(&self) -> usize {
        self.slot as usize
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Prompt tokens it did not read: its slot's cache held them already,
    /// or (a choice) the sequence that read the prompt gave them.
    pub fn cached_tokens(&self) -> usize {
        self.reused
    }

    pub fn completion_tokens(&self) -> usize {
        self.tokens.len() - self.prompt_tokens
    }

    /// The ids of the tokens generated so far.
    pub fn generated_ids(&self) -> Vec<u32> {
        self.tokens[self.prompt_tokens..].iter().map(|token| token.0 as u32).collect()
    }

    /// The log probabilities of the tokens decided since the last call.
    pub fn take_logprobs(&mut self) -> Vec<TokenLogprob> {
        std::mem::take(&mut self.logprobs)
    }

    /// Whether its prompt is still being read, as opposed to one token fed
    /// per step.
    pub fn is_reading(&self) -> bool {
        self.tokens.len() - self.cached > 1 || self.completion_tokens() == 0
    }
}

/// A llama.cpp context running several sequences together: each step feeds
/// every sequence its next input in one batch (continuous batching: a new
/// sequence joins between steps, and a finished one leaves).
pub struct Decoder<'m> {
    pub(super) model: &'m ChatModel,
    pub(super) context: LlamaContext<'m>,
    batch: LlamaBatch<'m>,
    batch_tokens: usize,
    slots: usize,
    /// The group the next sequence started alone gets.
    next_group: u64,
    /// What each slot's part of the cache holds while no sequence runs in
    /// it (empty when nothing, or when prompts are not kept).
    kept: Vec<Kept>,
    keep_prompts: bool,
}

/// The tokens a free slot's cells hold, and how many of them were read
/// as a prompt (the rest were generated one at a time).
#[derive(Default)]
struct Kept {
    tokens: Vec<LlamaToken>,
    prompt: usize,
}

impl<'m> Decoder<'m> {
    /// Sequences it can hold at once.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Bytes of its KV cache: `context_length` tokens for each slot.
    pub fn cache_bytes(&self) -> u64 {
        (self.slots * self.model.context_length()) as u64 * self.model.kv_bytes_per_token()
    }

    /// Whether a finished sequence's cells stay in its slot for a later
    /// prompt that starts the same way (prefix reuse).
    pub fn keep_prompts(&mut self, keep: bool) {
        self.keep_prompts = keep;
        if !keep {
            for slot in 0..self.slots {
                self.forget_slot(slot);
            }
        }
    }

    /// How many tokens from the start of `prompt` the free slot `slot`
    /// holds already, such that reading only the rest gives the very
    /// logits reading all of it gives:
    /// - only cells its last prompt read count, not those of tokens it
    ///   generated: llama.cpp computes a batch of one token by other
    ///   kernels than a batch of several, which round differently;
    /// - never the prompt's last token (reading it gives the logits), and
    ///   never so many that the first chunk read alone holds one token
    ///   where reading from the start would read it among others.
    ///
    /// This holds on AMX hosts too: llama.cpp's AMX products compute each
    /// row of a batch of two or more alike whatever the batch's size (int8
    /// tiles, exact, then the same f32 scaling per row); only a batch of
    /// one takes its VNNI kernel (the reuse tests check it bit for bit on
    /// such a host).
    pub fn reusable(&self, slot: usize, prompt: &[u32]) -> usize {
        let Some(kept) = self.kept.get(slot) else {
            return 0;
        };
        let common =
            kept.tokens.iter().zip(prompt).take_while(|(kept, &token)| kept.0 as u32 == token).count();
        let reused = common.min(kept.prompt).min(prompt.len().saturating_sub(1));
        let chunk = self.batch_tokens;
        let chunk_end = ((reused / chunk + 1) * chunk).min(prompt.len());
        if reused % chunk != 0 && chunk_end - reused == 1 {
            reused - 1
        } else {
            reused
        }
    }

    /// Starts a completion of `prompt` in `slot` (one no other live
    /// sequence uses); it is read in the next steps, but for what the
    /// slot's cache holds of it already.
    pub fn start(
        &mut self,
        slot: usize,
        prompt: &[u32],
        params: &SamplingParams,
    ) -> Result<Sequence, EngineError> {
        if slot >= self.slots {
            return Err(EngineError::Input(format!("slot {slot} of a decoder with {} slots", self.slots)));
        }
        let mut sequence = self.model.sequence(slot, prompt, params)?;
        let reused = self.reusable(slot, prompt);
        // Drops the cells past the shared prefix, so positions from there
        // on are free for the rest of this prompt.
        if !self.context.clear_kv_cache_seq(Some(slot as u32), Some(reused as u32), None).unwrap_or(false) {
            self.forget_slot(slot);
            sequence.cached = 0;
        } else {
            sequence.cached = reused;
            sequence.reused = reused;
        }
        if let Some(kept) = self.kept.get_mut(slot) {
            *kept = Kept::default();
        }
        sequence.group = self.next_group;
        self.next_group += 1;
        Ok(sequence)
    }

    /// Empties a slot's part of the cache.
    fn forget_slot(&mut self, slot: usize) {
        let _ = self.context.clear_kv_cache_seq(Some(slot as u32), None, None);
        if let Some(kept) = self.kept.get_mut(slot) {
            *kept = Kept::default();
        }
    }

    /// Starts one completion of `prompt` per entry of `params`, in `slots`
    /// in order: the first reads the prompt, and when it has, its cache is
    /// copied to the others, which decide their first token from the same
    /// logits. Each then goes on alone, the same as if it had read the
    /// prompt itself (the same cells, the same logits).
    pub fn start_choices(
        &mut self,
        slots: &[usize],
        prompt: &[u32],
        params: &[SamplingParams],
    ) -> Result<Vec<Sequence>, EngineError> {
        let mut sequences: Vec<Sequence> = Vec::with_capacity(params.len());
        for (&slot, params) in slots.iter().zip(params) {
            let mut sequence = self.start(slot, prompt, params)?;
            if let Some(reader) = sequences.first() {
                // The reader's cells are copied whole into this slot.
                self.forget_slot(slot);
                sequence.cached = 0;
                sequence.reused = 0;
                sequence.group = reader.group;
                sequence.awaits_prompt = true;
            }
            sequences.push(sequence);
        }
        Ok(sequences)
    }

    /// A sequence finished or was cancelled; its slot is free again. Its
    /// cells stay there for a later prompt, when prompts are kept.
    pub fn release(&mut self, sequence: &mut Sequence) {
        let slot = sequence.slot();
        if self.keep_prompts && sequence.cached > 0 && slot < self.kept.len() {
            self.kept[slot] = Kept {
                tokens: sequence.tokens[..sequence.cached].to_vec(),
                prompt: sequence.prompt_tokens.min(sequence.cached),
            };
        } else {
            self.forget_slot(slot);
        }
        sequence.cached = 0;
        sequence.logits = None;
    }

    /// A sequence whose cells cannot be trusted (its decode failed): its
    /// slot's cache is emptied.
    fn discard(&mut self, sequence: &mut Sequence) {
        self.forget_slot(sequence.slot());
        sequence.cached = 0;
        sequence.logits = None;
    }

    /// Feeds each sequence its next input and decides the next token of
    /// each sequence whose input is all read: first the generating ones,
    /// one token each, in one batch; then each sequence reading its prompt,
    /// a chunk of it in a batch of its own, the same chunks as when it runs
    /// alone. llama.cpp splits a batch of unequal sequences into pieces
    /// whose shapes would depend on the neighbours, and the matrix kernels
    /// it picks (so the rounding) with them. Up to `STEP_TOKENS` tokens in
    /// all. On an error, the cache holds none of this step's tokens of the
    /// sequences it fed.
    pub fn step(&mut self, sequences: &mut [&mut Sequence]) -> Result<Vec<Progress>, EngineError> {
        adopt_orphans(sequences);
        let mut progress = vec![Progress::Reading; sequences.len()];
        let (reading, generating): (Vec<usize>, Vec<usize>) = (0..sequences.len())
            .filter(|&index| !sequences[index].awaits_prompt)
            .partition(|&index| sequences[index].is_reading());
        let mut budget = self.batch_tokens;
        if !generating.is_empty() {
            budget = budget.saturating_sub(generating.len());
            self.feed(sequences, &generating, &mut progress, usize::MAX)?;
        }
        for index in reading {
            if budget == 0 {
                break;
            }
            let fed = self.feed(sequences, &[index], &mut progress, budget)?;
            budget -= fed;
        }
        Ok(progress)
    }

    /// Decodes one batch: up to `limit` unread tokens of each of
    /// `sequences[indices]`; decides for those whose input is then all read.
    /// Returns the tokens fed.
    fn feed(
        &mut self,
        sequences: &mut [&mut Sequence],
        indices: &[usize],
        progress: &mut [Progress],
        limit: usize,
    ) -> Result<usize, EngineError> {
        self.batch.clear();
        let mut fed = Vec::with_capacity(indices.len());
        for &index in indices {
            let sequence = &mut *sequences[index];
            sequence.logits = None;
            let count = self.chunk(sequence.tokens.len(), sequence.cached, limit);
            for offset in 0..count {
                let position = sequence.cached + offset;
                let last = position + 1 == sequence.tokens.len();
                self.batch
                    .add(sequence.tokens[position], position as i32, &[sequence.slot], last)
                    .map_err(|error| EngineError::Input(error.to_string()))?;
                if last {
                    sequence.logits = Some(self.batch.n_tokens() - 1);
                }
            }
            fed.push(count);
        }
        if self.batch.n_tokens() == 0 {
            return Ok(0);
        }
        if let Err(error) = self.context.decode(&mut self.batch) {
            for &index in indices {
                self.discard(sequences[index]);
            }
            return Err(EngineError::Input(format!("decode failed: {error}")));
        }
        for (&index, count) in indices.iter().zip(&fed) {
            let sequence = &mut *sequences[index];
            sequence.cached += count;
            let prompt_read = sequence.completion_tokens() == 0;
            if let Some(logits) = sequence.logits.take() {
                progress[index] = self.decide(sequence, logits);
                if prompt_read {
                    self.share_prompt(sequences, index, logits, progress)?;
                }
            }
        }
        Ok(fed.iter().sum())
    }

    /// How many of a sequence's `unread` tokens (from `cached` to `len`)
    /// the next batch feeds, at most `limit`: up to the next multiple of
    /// the chunk size, so that a prompt is read in the same chunks
    /// whether it is read from its start or from a reused prefix; and
    /// never leaving one token alone before that boundary (a batch of one
    /// token rounds differently).
    fn chunk(&self, len: usize, cached: usize, limit: usize) -> usize {
        let chunk = self.batch_tokens;
        let boundary = ((cached / chunk + 1) * chunk).min(len);
        let count = (boundary - cached).min(limit);
        if count > 2 && boundary - (cached + count) == 1 {
            count - 1
        } else {
            count
        }
    }

    /// The prompt `sequences[reader]` has just read, given to the choices
    /// awaiting it: its cells copied to theirs (llama.cpp copies the part
    /// of the cache before the next decode), and each one's first token
    /// decided from the reader's logits.
    fn share_prompt(
        &mut self,
        sequences: &mut [&mut Sequence],
        reader: usize,
        logits: i32,
        progress: &mut [Progress],
    ) -> Result<(), EngineError> {
        let (group, source, reused) =
            (sequences[reader].group, sequences[reader].slot, sequences[reader].reused);
        for index in 0..sequences.len() {
            let choice = &mut *sequences[index];
            if !choice.awaits_prompt || choice.group != group {
                continue;
            }
            self.context
                .copy_kv_cache_seq(source, choice.slot, None, None)
                .map_err(|error| EngineError::Input(format!("cannot share the prompt: {error}")))?;
            choice.cached = choice.tokens.len();
            choice.reused = reused;
            choice.awaits_prompt = false;
            progress[index] = self.decide(choice, logits);
        }
        Ok(())
    }

    /// Generates one completion alone, calling `emit` with each piece of
    /// text as it is decided (never a part of a stop string, never half a
    /// UTF-8 character); `emit` returns false to cancel. Returns why it
    /// stopped and how many tokens it generated.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(FinishReason, usize), EngineError> {
        ChatDecoder::generate(self, prompt, params, emit)
    }
}

/// A choice awaiting a prompt that no sequence of its group reads any more
/// (the reader was cancelled) reads it itself, and the others of its group
/// await it.
fn adopt_orphans(sequences: &mut [&mut Sequence]) {
    for index in 0..sequences.len() {
        if !sequences[index].awaits_prompt {
            continue;
        }
        let group = sequences[index].group;
        let read = sequences
            .iter()
            .any(|other| other.group == group && !other.awaits_prompt && other.completion_tokens() == 0);
        if !read {
            sequences[index].awaits_prompt = false;
        }
    }
}

impl ChatModel {
    /// llama.cpp's plainest greedy loop, the oracle of the fidelity tests:
    /// a context of its own holding one sequence, the prompt read in
    /// batches of `STEP_TOKENS`, then one token per decode, each the argmax
    /// of the last logits, until end of turn or `max_tokens` (as the
    /// fixture script runs llama.cpp). None of the decoder's slots, batch
    /// scheduling, sampling or stop handling takes part.
    pub fn reference_greedy(&self, prompt: &[u32], max_tokens: usize) -> Result<Vec<u32>, EngineError> {
        self.reference_greedy_logits(prompt, max_tokens, &mut |_| {})
    }

    /// [`Self::reference_greedy`], handing `each` the logits every token
    /// was chosen from (the oracle of the log probability tests).
    pub fn reference_greedy_logits(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        each: &mut dyn FnMut(&[f32]),
    ) -> Result<Vec<u32>, EngineError> {
        let failed = |error: &dyn std::fmt::Display| EngineError::Input(error.to_string());
        let batch_tokens = self.context_length.min(STEP_TOKENS);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.context_length as u32))
            .with_n_batch(batch_tokens as u32)
            .with_n_ubatch(batch_tokens as u32)
            .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED)
            .with_n_threads(2)
            .with_n_threads_batch(2);
        let mut context = self
            .model
            .new_context(backend()?, params)
            .map_err(|error| EngineError::Load(error.to_string()))?;
        let mut batch = LlamaBatch::new(batch_tokens, 1);
        let mut tokens: Vec<LlamaToken> = prompt.iter().map(|&token| LlamaToken(token as i32)).collect();
        let mut read = 0;
        let mut generated = Vec::new();
        while generated.len() < max_tokens {
            batch.clear();
            let end = tokens.len().min(read + batch_tokens);
            for (position, token) in tokens.iter().enumerate().take(end).skip(read) {
                batch
                    .add(*token, position as i32, &[0], position + 1 == end)
                    .map_err(|error| failed(&error))?;
            }
            context.decode(&mut batch).map_err(|error| failed(&error))?;
            read = end;
            if read < tokens.len() {
                continue;
            }
            let logits = context.get_logits_ith(batch.n_tokens() - 1);
            let token = first_argmax(logits);
            if self.model.vocab().is_eog(token) {
                break;
            }
            each(logits);
            generated.push(token.0 as u32);
            tokens.push(token);
        }
        Ok(generated)
    }

    /// A decoder for one worker: one llama.cpp context of `threads` compute
    /// threads, holding up to `slots` sequences at once, each in its own
    /// part of the KV cache (`context_length` tokens). Separate parts keep
    /// every sequence's arithmetic the same whatever runs beside it: in one
    /// shared cache, attention sums would run over the other sequences'
    /// masked cells and round differently, so a greedy or seeded completion
    /// would depend on the load.
    pub fn decoder(&self, threads: usize, slots: usize) -> Result<Decoder<'_>, EngineError> {
        let slots = slots.clamp(1, MAX_SLOTS);
        let cells = NonZeroU32::new((self.context_length * slots) as u32);
        let threads = threads.max(1) as i32;
        let batch_tokens = self.context_length.min(STEP_TOKENS);
        let params = LlamaContextParams::default()
            .with_n_ctx(cells)
            .with_n_batch(batch_tokens as u32)
            .with_n_ubatch(batch_tokens as u32)
            .with_n_seq_max(slots as u32)
            .with_kv_unified(false)
            // llama.cpp's CPU flash attention costs a fifth of a decoding
            // step for this model against a tenth for the plain
            // softmax(QK)V (perf, 2 threads); llama.cpp's own default
            // (auto) turns it on.
            .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let context = self
            .model
            .new_context(backend()?, params)
            .map_err(|error| EngineError::Load(error.to_string()))?;
        let batch = LlamaBatch::new(batch_tokens, 1);
        let kept = (0..slots).map(|_| Kept::default()).collect();
        Ok(Decoder {
            model: self,
            context,
            batch,
            batch_tokens,
            slots,
            next_group: 0,
            kept,
            keep_prompts: false,
        })
    }

    /// A completion of `prompt` to run in slot `slot` of a decoder.
    fn sequence(
        &self,
        slot: usize,
        prompt: &[u32],
        params: &SamplingParams,
    ) -> Result<Sequence, EngineError> {
        self.check_window(prompt.len(), params.max_tokens)?;
        if prompt.is_empty() {
            return Err(EngineError::Input("the prompt has no tokens".to_owned()));
        }
        Ok(Sequence {
            slot: slot as i32,
            tokens: prompt.iter().map(|&token| LlamaToken(token as i32)).collect(),
            cached: 0,
            prompt_tokens: prompt.len(),
            max_tokens: params.max_tokens,
            sampler: self.sampler(params),
            grammar: params.grammar.as_ref().map(|grammar| self.grammar_sampler(grammar)).transpose()?,
            top_logprobs: params.logprobs,
            logprobs: Vec::new(),
            argmax: params.temperature <= 0.0
                && params.presence_penalty == 0.0
                && params.frequency_penalty == 0.0,
            text: StopScanner::new(params.stop.clone()),
            utf8: Vec::new(),
            logits: None,
            group: 0,
            awaits_prompt: false,
            reused: 0,
        })
    }
}
