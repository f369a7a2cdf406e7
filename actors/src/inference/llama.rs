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
use llama_cpp_2::model::LlamaModel;
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

impl SamplingParams {
    /// The most likely token each time, up to `max_tokens`.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            stop: Vec::new(),
        }
    }
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
    template: ChatTemplate,
    context_length: usize,
    /// The longest any one token's text is, bytes: a text longer than the
    /// window times this cannot fit, and is refused without tokenizing.
    longest_token_bytes: usize,
    /// Recent prompts' tokens: llama.cpp's tokenizer splits text with
    /// std::regex (hundreds of microseconds for a short prompt), and the
    /// request path counts every prompt, cached answers included.
    tokenized: moka::sync::Cache<(bool, String), Arc<[u32]>>,
    /// Recent conversations' prompt tokens, by the conversation's SHA-256
    /// (collision-resistant: a prompt never gets another's tokens): the
    /// template render and the tokenizer both skipped.
    prompts: moka::sync::Cache<[u8; 32], Arc<[u32]>>,
}

/// What the tokenization memo holds at most, in bytes of text and tokens.
const TOKENIZED_BYTES: u64 = 32 << 20;

/// Whether llama.cpp was built with its AMX kernels (the Q4_1 products on
/// AMX tiles, on a CPU that has them); they round differently from its
/// plain CPU kernels.
pub fn llama_has_amx() -> bool {
    // SAFETY: a constant query without arguments.
    unsafe { llama_cpp_sys_2::ggml_cpu_has_amx_int8() != 0 }
}

impl ChatModel {
    /// Loads a `.gguf` file; the context window of a sequence is the
    /// model's trained one, capped at `max_context`.
    pub fn load(path: &Path, max_context: usize) -> Result<Arc<Self>, EngineError> {
        Self::load_offloaded(path, max_context, 0)
    }

    /// Loads as [`ChatModel::load`] does, with up to `gpu_layers` of the
    /// model's layers on the GPU. A build without a GPU backend (no `cuda`
    /// feature) runs them on the CPU and says so once.
    pub fn load_offloaded(
        path: &Path,
        max_context: usize,
        gpu_layers: u32,
    ) -> Result<Arc<Self>, EngineError> {
        let backend = backend()?;
        let offloaded = if gpu_layers > 0 && !backend.supports_gpu_offload() {
            tracing::warn!(
                gpu_layers,
                model = %path.display(),
                "gpu_layers is set but this build has no GPU backend (build with --features cuda); the model runs on the CPU"
            );
            0
        } else {
            gpu_layers
        };
        let params = LlamaModelParams::default().with_n_gpu_layers(offloaded);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|error| EngineError::Load(error.to_string()))?;
        let source = model
            .meta_val_str("tokenizer.chat_template")
            .map_err(|error| EngineError::Load(format!("the GGUF has no chat template: {error}")))?;
        let special = |token: LlamaToken| {
            model.vocab().text(token).map(|text| text.to_string_lossy().into_owned()).unwrap_or_default()
        };
        let template = ChatTemplate::new(source, special(model.vocab().bos()), special(model.vocab().eos()))?;
        let context_length = (model.n_ctx_train() as usize).min(max_context).max(16);
        let longest_token_bytes = (0..model.n_vocab())
            .filter_map(|id| model.vocab().text(LlamaToken(id)).map(|text| text.to_bytes().len()))
            .max()
            .unwrap_or(1)
            .max(1);
        let tokenized = moka::sync::Cache::builder()
            .max_capacity(TOKENIZED_BYTES)
            .weigher(|(_, text): &(bool, String), tokens: &Arc<[u32]>| {
                u32::try_from(text.len() + 4 * tokens.len() + 64).unwrap_or(u32::MAX)
            })
            .build();
        let prompts = moka::sync::Cache::builder()
            .max_capacity(TOKENIZED_BYTES)
            .weigher(|_: &[u8; 32], tokens: &Arc<[u32]>| {
                u32::try_from(4 * tokens.len() + 96).unwrap_or(u32::MAX)
            })
            .build();
        Ok(Arc::new(Self { model, template, context_length, longest_token_bytes, tokenized, prompts }))
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The most bytes of text that can fit the window: every token covers
    /// at most `longest_token_bytes` of it (byte-level and byte-fallback
    /// token texts are at least as long as the bytes they stand for), so a
    /// longer text needs more tokens than the window holds. Checked before
    /// rendering or tokenizing, whose buffers grow with the text.
    pub fn most_text_bytes(&self) -> usize {
        self.context_length.saturating_mul(self.longest_token_bytes)
    }

    /// The prompt of a conversation, by the model's own chat template, with
    /// the assistant's turn opened.
    pub fn render(&self, messages: &[(String, String)]) -> Result<String, EngineError> {
        self.template.render(messages)
    }

    /// The prompt tokens of a conversation: its turns through the template,
    /// tokenized, with the assistant's turn opened.
    pub fn prompt_tokens(&self, messages: &[(String, String)]) -> Result<Vec<u32>, EngineError> {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        for (role, text) in messages {
            // Lengths first: no two conversations hash the same bytes.
            hash.update((role.len() as u64).to_le_bytes());
            hash.update(role.as_bytes());
            hash.update((text.len() as u64).to_le_bytes());
            hash.update(text.as_bytes());
        }
        let key: [u8; 32] = hash.finalize().into();
        if let Some(tokens) = self.prompts.get(&key) {
            return Ok(tokens.to_vec());
        }
        let tokens = self.tokenize_afresh(&self.render(messages)?, true);
        self.prompts.insert(key, tokens.as_slice().into());
        Ok(tokens)
    }

    /// The model's tokens of `text`; special tokens in the text are parsed
    /// (the chat template writes them), a BOS is added if the model wants one.
    pub fn tokenize(&self, text: &str, add_special: bool) -> Vec<u32> {
        let key = (add_special, text.to_owned());
        if let Some(tokens) = self.tokenized.get(&key) {
            return tokens.to_vec();
        }
        let tokens = self.tokenize_afresh(text, add_special);
        self.tokenized.insert(key, tokens.as_slice().into());
        tokens
    }

    fn tokenize_afresh(&self, text: &str, add_special: bool) -> Vec<u32> {
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

    /// llama.cpp's plainest greedy loop, the oracle of the fidelity tests:
    /// a context of its own holding one sequence, the prompt read in
    /// batches of `STEP_TOKENS`, then one token per decode, each the argmax
    /// of the last logits, until end of turn or `max_tokens` (as the
    /// fixture script runs llama.cpp). None of the decoder's slots, batch
    /// scheduling, sampling or stop handling takes part.
    pub fn reference_greedy(&self, prompt: &[u32], max_tokens: usize) -> Result<Vec<u32>, EngineError> {
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
            let token = first_argmax(context.get_logits_ith(batch.n_tokens() - 1));
            if self.model.vocab().is_eog(token) {
                break;
            }
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
        Ok(Decoder { model: self, context, batch: LlamaBatch::new(batch_tokens, 1), batch_tokens, slots })
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
            argmax: params.temperature <= 0.0
                && params.presence_penalty == 0.0
                && params.frequency_penalty == 0.0,
            text: StopScanner::new(params.stop.clone()),
            utf8: Vec::new(),
            logits: None,
        })
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

/// The GGUF's chat template, a Jinja template run the way Hugging Face's
/// `apply_chat_template` runs it (blocks trimmed, Python string methods),
/// so the prompt is exactly the one the model was trained on: llama.cpp's
/// built-in approximations drop parts such as a default system message.
struct ChatTemplate {
    environment: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    fn new(source: String, bos_token: String, eos_token: String) -> Result<Self, EngineError> {
        let mut environment = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|error| EngineError::Load(format!("template syntax: {error}")))?;
        environment.set_syntax(syntax);
        environment.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        environment.add_template_owned("chat", source).map_err(|error| {
            EngineError::Load(format!("the GGUF's chat template does not parse: {error}"))
        })?;
        Ok(Self { environment, bos_token, eos_token })
    }

    fn render(&self, messages: &[(String, String)]) -> Result<String, EngineError> {
        let messages: Vec<_> = messages
            .iter()
            .map(|(role, content)| minijinja::context! { role => role, content => content })
            .collect();
        let template = self
            .environment
            .get_template("chat")
            .map_err(|error| EngineError::Input(format!("cannot apply the chat template: {error}")))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|error| EngineError::Input(format!("cannot apply the chat template: {error}")))
    }
}

/// Most sequences one decoder holds at once.
pub const MAX_SLOTS: usize = 64;

/// Most tokens fed to the model in one step: a long prompt is read in
/// chunks of this size, so the sequences already generating beside it wait
/// at most one chunk for their next token.
const STEP_TOKENS: usize = 512;

/// One completion in a decoder: its tokens so far (the prompt, then what was
/// generated) and how many of them its part of the KV cache holds.
pub struct Sequence {
    slot: i32,
    tokens: Vec<LlamaToken>,
    /// How many of `tokens` (from the start) are in the KV cache; the rest
    /// are fed in the next steps.
    cached: usize,
    prompt_tokens: usize,
    max_tokens: usize,
    sampler: LlamaSampler,
    /// Greedy without penalties: the token is the argmax of the logits,
    /// read in place instead of through the sampler's copy of them.
    argmax: bool,
    text: StopScanner,
    utf8: Vec<u8>,
    /// Where this sequence's logits are in the last batch, if it has some.
    logits: Option<i32>,
}

impl Sequence {
    pub fn slot(&self) -> usize {
        self.slot as usize
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    pub fn completion_tokens(&self) -> usize {
        self.tokens.len() - self.prompt_tokens
    }

    /// The ids of the tokens generated so far.
    pub fn generated_ids(&self) -> Vec<u32> {
        self.tokens[self.prompt_tokens..].iter().map(|token| token.0 as u32).collect()
    }

    /// Whether its prompt is still being read, as opposed to one token fed
    /// per step.
    pub fn is_reading(&self) -> bool {
        self.tokens.len() - self.cached > 1 || self.completion_tokens() == 0
    }
}

/// What one step did for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Its input is not all read yet; no token this step.
    Reading,
    /// Its next token was decided; the text now safe to send (may be empty:
    /// part of a character, or of a possible stop string).
    Text(String),
    /// The completion ended, with its last text.
    Finished { text: String, reason: FinishReason, completion_tokens: usize },
}

/// A llama.cpp context running several sequences together: each step feeds
/// every sequence its next input in one batch (continuous batching: a new
/// sequence joins between steps, and a finished one leaves).
pub struct Decoder<'m> {
    model: &'m ChatModel,
    context: LlamaContext<'m>,
    batch: LlamaBatch<'m>,
    batch_tokens: usize,
    slots: usize,
}

impl<'m> Decoder<'m> {
    /// Sequences it can hold at once.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Starts a completion of `prompt` in `slot` (one no other live
    /// sequence uses); it is read in the next steps.
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
        self.release(&mut sequence);
        Ok(sequence)
    }

    /// Drops a sequence's cells from the KV cache (it finished or was
    /// cancelled); its slot is free again.
    pub fn release(&mut self, sequence: &mut Sequence) {
        let _ = self.context.clear_kv_cache_seq(Some(sequence.slot as u32), None, None);
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
        let mut progress = vec![Progress::Reading; sequences.len()];
        let (reading, generating): (Vec<usize>, Vec<usize>) =
            (0..sequences.len()).partition(|&index| sequences[index].is_reading());
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
            let count = (sequence.tokens.len() - sequence.cached).min(limit).min(self.batch_tokens);
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
                self.release(sequences[index]);
            }
            return Err(EngineError::Input(format!("decode failed: {error}")));
        }
        for (&index, count) in indices.iter().zip(&fed) {
            let sequence = &mut *sequences[index];
            sequence.cached += count;
            if let Some(logits) = sequence.logits.take() {
                progress[index] = self.decide(sequence, logits);
            }
        }
        Ok(fed.iter().sum())
    }

    /// Samples a sequence's next token from its logits at `index`.
    fn decide(&mut self, sequence: &mut Sequence, index: i32) -> Progress {
        let vocabulary = self.model.model.vocab();
        let token = if sequence.argmax {
            first_argmax(self.context.get_logits_ith(index))
        } else {
            // Also records the token in the sampler (for the penalties).
            sequence.sampler.sample(&self.context, index)
        };
        if vocabulary.is_eog(token) {
            let text = sequence.text.finish();
            return Progress::Finished {
                text,
                reason: FinishReason::Stop,
                completion_tokens: sequence.completion_tokens(),
            };
        }
        sequence.tokens.push(token);
        sequence.utf8.extend(vocabulary.token_to_piece(token, false, None));
        let complete = complete_utf8(&mut sequence.utf8);
        let completion_tokens = sequence.completion_tokens();
        match sequence.text.push(&complete) {
            Scan::Stopped(text) => Progress::Finished { text, reason: FinishReason::Stop, completion_tokens },
            Scan::Continue(mut text) if completion_tokens >= sequence.max_tokens => {
                text.push_str(&String::from_utf8_lossy(&std::mem::take(&mut sequence.utf8)));
                text.push_str(&sequence.text.finish());
                Progress::Finished { text, reason: FinishReason::Length, completion_tokens }
            }
            Scan::Continue(text) => Progress::Text(text),
        }
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

/// The token of the highest logit, the first one on a tie (as llama.cpp's
/// greedy sampler picks).
fn first_argmax(logits: &[f32]) -> LlamaToken {
    let mut best = 0;
    for (index, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = index;
        }
    }
    LlamaToken(best as i32)
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
struct StopScanner {
    stops: Vec<String>,
    pending: String,
}

impl StopScanner {
    fn new(stops: Vec<String>) -> Self {
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
        let mut scanner = StopScanner::new(stops.clone());
        assert!(matches!(scanner.push("hello E"), Scan::Continue(text) if text == "hello "));
        assert!(matches!(scanner.push("N"), Scan::Continue(text) if text.is_empty()));
        assert!(matches!(scanner.push("Dgame"), Scan::Stopped(text) if text.is_empty()));
        let mut scanner = StopScanner::new(stops.clone());
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
