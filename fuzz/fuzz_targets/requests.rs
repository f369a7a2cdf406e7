//! The request parsers: arbitrary bytes as the body of each OpenAI
//! endpoint, through the strict JSON parser (with its second pass that
//! names the field at fault) and every check made before a model is
//! needed. Either the body is accepted or the error is a 400 in OpenAI's
//! shape; never a panic.

#![no_main]

use std::sync::LazyLock;

use blaze::openai::{check_body, Endpoint};
use blaze::settings::{ConfigSources, Settings, ValidationSettings};
use libfuzzer_sys::fuzz_target;

static LIMITS: LazyLock<ValidationSettings> = LazyLock::new(|| {
    let mut settings = Settings::load(&ConfigSources::default())
        .unwrap_or_else(|errors| panic!("the default configuration does not load: {errors:?}"));
    // Small limits, so that short inputs reach every limit's error.
    settings.validation.max_messages = 4;
    settings.validation.max_text_chars = 64;
    settings.validation.max_embedding_inputs = 4;
    settings.validation.max_tokens = 100;
    settings.validation.max_stop_sequences = 2;
    settings.validation
});

const ENDPOINTS: [Endpoint; 4] =
    [Endpoint::Chat, Endpoint::Completions, Endpoint::Embeddings, Endpoint::Responses];

fuzz_target!(|data: &[u8]| {
    for endpoint in ENDPOINTS {
        if let Err(error) = check_body(endpoint, data, &LIMITS) {
            assert_eq!(error.status().as_u16(), 400, "{endpoint:?}: {error:?}");
            let body = error.body(None);
            assert_eq!(body["error"]["type"], "invalid_request_error", "{endpoint:?}: {body}");
            assert!(body["error"]["message"].as_str().is_some_and(|message| !message.is_empty()));
        }
    }
});
