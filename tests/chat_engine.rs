//! The chat engine on the real GGUF (SmolLM2-135M-Instruct, Q4_1).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blaze::settings::{ConfigSources, Settings};
use blaze_actors::inference::{ChatModel, FinishReason, SamplingParams};
use blaze_actors::router::{ModelCache, ModelFiles};

const MODEL: &str = "smollm2-135m-instruct";

fn model() -> std::sync::Arc<ChatModel> {
    let settings = Settings::load(&ConfigSources::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime
        .block_on(blaze::models::pull(&settings.models, &[MODEL.to_owned()], blaze::models::Progress::Bar))
        .unwrap();
    let directory = match ModelCache::from_environment().locate(MODEL, &settings.models.catalog[MODEL]) {
        Some(ModelFiles::Directory(directory)) => directory,
        other => panic!("{other:?}"),
    };
    ChatModel::load(&directory.join("model.gguf"), 2048).unwrap()
}

fn params(max_tokens: usize, temperature: f32, seed: u32, stop: &[&str]) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature,
        top_p: 0.95,
        seed,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        stop: stop.iter().map(|stop| (*stop).to_owned()).collect(),
    }
}

fn complete(model: &ChatModel, prompt: &[u32], params: &SamplingParams) -> (String, FinishReason, usize) {
    let mut context = model.new_context(2).unwrap();
    let mut text = String::new();
    let (finish, tokens) = model
        .generate(&mut context, prompt, params, &mut |piece| {
            text.push_str(piece);
            true
        })
        .unwrap();
    (text, finish, tokens)
}

#[test]
fn generation_follows_the_template_and_the_sampling_parameters() {
    let model = model();
    let rendered = model
        .render(&[("user".to_owned(), "What is the capital of France? Answer in one word.".to_owned())])
        .unwrap();
    assert!(rendered.contains("<|im_start|>user"), "the GGUF's own ChatML template: {rendered}");
    assert!(rendered.ends_with("<|im_start|>assistant\n"));
    let prompt = model.tokenize(&rendered, true);

    let (greedy, finish, _) = complete(&model, &prompt, &params(32, 0.0, 0, &[]));
    assert!(greedy.contains("Paris"), "{greedy}");
    assert_eq!(finish, FinishReason::Stop, "the model ends its turn");
    assert_eq!(complete(&model, &prompt, &params(32, 0.0, 0, &[])).0, greedy, "greedy is deterministic");

    let (short, finish, tokens) = complete(&model, &prompt, &params(2, 0.0, 0, &[]));
    assert_eq!((finish, tokens), (FinishReason::Length, 2));
    assert!(greedy.starts_with(&short));

    let creative = params(24, 1.0, 1234, &[]);
    assert_eq!(
        complete(&model, &prompt, &creative).0,
        complete(&model, &prompt, &creative).0,
        "same seed, same text"
    );

    let (cut, finish, _) = complete(&model, &prompt, &params(32, 0.0, 0, &["ris"]));
    assert_eq!(finish, FinishReason::Stop);
    assert!(!cut.contains("ris") && greedy.starts_with(&cut), "{cut}");

    let too_long = vec![1u32; 2040];
    let mut context = model.new_context(1).unwrap();
    let error = model.generate(&mut context, &too_long, &params(16, 0.0, 0, &[]), &mut |_| true).unwrap_err();
    assert!(error.to_string().contains("2048"), "{error}");
}
