//! The chat engine: a GGUF model through llama.cpp (`llama-cpp-2`, built
//! from source), with the chat template and tokenizer of the GGUF itself.
//!
//! The model is shared (read-only) between the request path, which renders
//! and counts prompts, and the worker threads, each with its own context.

mod decoder;
mod engine;
mod model;
mod sampling;
mod template;

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;

pub use self::decoder::{Decoder, Sequence};
pub use self::model::ChatModel;
use crate::inference::engine::EngineError;

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

/// Whether llama.cpp was built with its AMX kernels (the Q4_1 products on
/// AMX tiles, on a CPU that has them); they round differently from its
/// plain CPU kernels.
pub fn llama_has_amx() -> bool {
    // SAFETY: a constant query without arguments.
    unsafe { llama_cpp_sys_2::ggml_cpu_has_amx_int8() != 0 }
}
