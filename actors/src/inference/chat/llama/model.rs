//! A loaded GGUF model: its chat template, tokenizer and context window,
//! shared read-only by the request path and the worker threads.

use std::path::Path;
use std::sync::Arc;

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use serde_json::Value;

use super::backend;
use super::template::ChatTemplate;
use crate::inference::chat;
use crate::inference::engine::EngineError;

/// A loaded chat model.
pub struct ChatModel {
    pub(super) model: LlamaModel,
    template: ChatTemplate,
    pub(super) context_length: usize,
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
    /// the assistant's turn opened. The `tools` it may call (OpenAI's
    /// definitions) are rendered by the template where it renders them,
    /// else described in the system message (see `chat/tools.rs`).
    pub fn render(&self, messages: &[(String, String)], tools: &[Value]) -> Result<String, EngineError> {
        if tools.is_empty() || self.template.renders_tools() {
            return self.template.render(messages, tools);
        }
        let described = chat::tools::system_text(tools);
        let mut messages = messages.to_vec();
        match messages.first_mut() {
            Some((role, text)) if role == "system" => *text = format!("{text}\n\n{described}"),
            _ => messages.insert(0, ("system".to_owned(), described)),
        }
        self.template.render(&messages, &[])
    }

    /// The prompt tokens of a conversation (and the tools it may call):
    /// its turns through the template, tokenized, with the assistant's
    /// turn opened.
    pub fn prompt_tokens(
        &self,
        messages: &[(String, String)],
        tools: &[Value],
    ) -> Result<Vec<u32>, EngineError> {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        let tool_texts: Vec<String> = tools.iter().map(Value::to_string).collect();
        let texts = messages.iter().flat_map(|(role, text)| [role, text]).chain(&tool_texts);
        for text in texts {
            // Lengths first: no two conversations hash the same bytes.
            hash.update((text.len() as u64).to_le_bytes());
            hash.update(text.as_bytes());
        }
        // A conversation with no tools and one with tools differ in count.
        hash.update((tool_texts.len() as u64).to_le_bytes());
        let key: [u8; 32] = hash.finalize().into();
        if let Some(tokens) = self.prompts.get(&key) {
            return Ok(tokens.to_vec());
        }
        let tokens = self.tokenize_afresh(&self.render(messages, tools)?, true);
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

    /// The text of `tokens`, special tokens written out (`<|im_start|>`);
    /// an id outside the vocabulary is an error naming it.
    pub fn detokenize(&self, tokens: &[u32]) -> Result<String, EngineError> {
        let bytes: Vec<u8> = self.token_texts(tokens)?.into_iter().flatten().collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Each token's bytes, special tokens written out (a token may hold
    /// part of a UTF-8 character).
    pub fn token_texts(&self, tokens: &[u32]) -> Result<Vec<Vec<u8>>, EngineError> {
        let vocabulary = self.model.vocab();
        let size = vocabulary.n_tokens().max(0) as u32;
        if let Some(token) = tokens.iter().find(|&&token| token >= size) {
            let message =
                format!("token id {token} is outside the vocabulary (0 to {})", size.saturating_sub(1));
            return Err(EngineError::Input(message));
        }
        Ok(tokens
            .iter()
            .map(|&token| vocabulary.token_to_piece(LlamaToken(token as i32), true, None))
            .collect())
    }

    /// The GGUF's `general.architecture` (llama, bert, ...).
    pub fn architecture(&self) -> Option<String> {
        self.model.meta_val_str("general.architecture").ok()
    }

    /// Bytes of weights the model holds in memory.
    pub fn weights_bytes(&self) -> u64 {
        self.model.size()
    }

    /// Bytes of KV cache one token takes: a key and a value of every
    /// KV head in every layer, in f16 (llama.cpp's default cache type).
    pub fn kv_bytes_per_token(&self) -> u64 {
        let heads = u64::from(self.model.n_head().max(1));
        let head_dimension = u64::try_from(self.model.n_embd()).unwrap_or(0) / heads;
        let per_layer = 2 * u64::from(self.model.n_head_kv()) * head_dimension * 2;
        u64::from(self.model.n_layer()) * per_layer
    }

    pub fn parameters(&self) -> u64 {
        self.model.n_params()
    }

    /// How the GGUF's weights are stored (its `general.file_type`), as
    /// llama.cpp names the types.
    pub fn quantization(&self) -> Option<&'static str> {
        let file_type = self.model.meta_val_str("general.file_type").ok()?.parse::<u32>().ok()?;
        let name = match file_type {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            7 => "Q8_0",
            8 => "Q5_0",
            9 => "Q5_1",
            10 => "Q2_K",
            11 => "Q3_K_S",
            12 => "Q3_K_M",
            13 => "Q3_K_L",
            14 => "Q4_K_S",
            15 => "Q4_K_M",
            16 => "Q5_K_S",
            17 => "Q5_K_M",
            18 => "Q6_K",
            32 => "BF16",
            _ => return None,
        };
        Some(name)
    }

    /// The bytes a token stands for in generated text.
    pub fn token_bytes(&self, token: u32) -> Vec<u8> {
        self.model.vocab().token_to_piece(llama_cpp_2::token::LlamaToken(token as i32), false, None)
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
}
