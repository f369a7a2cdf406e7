//! The chat engine on the real GGUF (SmolLM2-135M-Instruct, Q4_1).

use blaze::settings::{ConfigSources, Settings};
use blaze_actors::inference::{llama_has_amx, ChatModel, FinishReason, Progress, SamplingParams};
use blaze_actors::router::{ModelCache, ModelFiles};

const MODEL: &str = "smollm2-135m-instruct";

/// The tests take turns: llama.cpp's compute threads spin at barriers, so
/// decoders running at once on two cores starve each other.
/// The turn every decoding test of the suite shares (these run the
/// engine in this process, the others in a server).
pub(crate) fn decoding_turn() -> tokio::sync::SemaphorePermit<'static> {
    crate::common::decoding_turn_blocking()
}

pub(crate) fn model() -> std::sync::Arc<ChatModel> {
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

pub(crate) fn params(max_tokens: usize, temperature: f32, seed: u32, stop: &[&str]) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature,
        top_p: 0.95,
        seed,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        stop: stop.iter().map(|stop| (*stop).to_owned()).collect(),
        grammar: None,
        logprobs: None,
    }
}

fn complete(model: &ChatModel, prompt: &[u32], params: &SamplingParams) -> (String, FinishReason, usize) {
    let mut decoder = model.decoder(2, 1).unwrap();
    let mut text = String::new();
    let (finish, tokens) = decoder
        .generate(prompt, params, &mut |piece| {
            text.push_str(piece);
            true
        })
        .unwrap();
    (text, finish, tokens)
}

#[test]
fn generation_follows_the_template_and_the_sampling_parameters() {
    let _turn = decoding_turn();
    let model = model();
    let rendered = model
        .render(&[("user".to_owned(), "What is the capital of France? Answer in one word.".to_owned())], &[])
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
    let mut decoder = model.decoder(1, 1).unwrap();
    let error = decoder.generate(&too_long, &params(16, 0.0, 0, &[]), &mut |_| true).unwrap_err();
    assert!(error.to_string().contains("2048"), "{error}");
}

/// Runs `prompts` together in one decoder, the later ones joining a few
/// steps after the first, and returns each one's text.
fn complete_together(model: &ChatModel, prompts: &[Vec<u32>], params: &SamplingParams) -> Vec<String> {
    let mut decoder = model.decoder(2, prompts.len()).unwrap();
    let mut sequences = vec![decoder.start(0, &prompts[0], params).unwrap()];
    let mut texts = vec![String::new(); prompts.len()];
    let mut done = vec![false; prompts.len()];
    for step in 0..400 {
        if step == 3 {
            for (slot, prompt) in prompts.iter().enumerate().skip(1) {
                sequences.push(decoder.start(slot, prompt, params).unwrap());
            }
        }
        let mut running: Vec<_> = sequences.iter_mut().filter(|sequence| !done[sequence.slot()]).collect();
        if running.is_empty() {
            return texts;
        }
        let slots: Vec<usize> = running.iter().map(|sequence| sequence.slot()).collect();
        let progress = decoder.step(&mut running).unwrap();
        for (slot, progress) in slots.into_iter().zip(progress) {
            match progress {
                Progress::Reading => {}
                Progress::Text(text) => texts[slot].push_str(&text),
                Progress::Finished { text, .. } => {
                    texts[slot].push_str(&text);
                    done[slot] = true;
                }
            }
        }
    }
    panic!("the sequences did not finish in 400 steps: {texts:?}");
}

#[test]
fn sequences_decoded_together_match_each_decoded_alone() {
    let _turn = decoding_turn();
    let model = model();
    let questions =
        ["What is 2 + 2?", "Name a color.", "Say hello in French.", "What is the capital of Italy?"];
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|question| {
            model.tokenize(&model.render(&[("user".to_owned(), (*question).to_owned())], &[]).unwrap(), true)
        })
        .collect();
    let greedy = params(24, 0.0, 0, &[]);
    let alone: Vec<String> = prompts.iter().map(|prompt| complete(&model, prompt, &greedy).0).collect();
    let together = complete_together(&model, &prompts, &greedy);
    assert_eq!(together, alone, "no cross-talk between the sequences of one batch");
    assert!(alone.iter().all(|text| !text.is_empty()));
}

/// Greedy token ids of a prompt, alone (`batched` false) or decoded beside
/// the other prompts.
fn greedy_ids(model: &ChatModel, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    let mut decoder = model.decoder(2, prompts.len()).unwrap();
    let greedy = params(max_tokens, 0.0, 0, &[]);
    let mut sequences: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(slot, prompt)| decoder.start(slot, prompt, &greedy).unwrap())
        .collect();
    let mut done = vec![false; prompts.len()];
    for _ in 0..(max_tokens + 64) {
        let mut running: Vec<_> = sequences.iter_mut().filter(|sequence| !done[sequence.slot()]).collect();
        if running.is_empty() {
            break;
        }
        let slots: Vec<usize> = running.iter().map(|sequence| sequence.slot()).collect();
        for (slot, progress) in slots.into_iter().zip(decoder.step(&mut running).unwrap()) {
            done[slot] |= matches!(progress, Progress::Finished { .. });
        }
    }
    assert!(done.iter().all(|done| *done));
    sequences.iter().map(|sequence| sequence.generated_ids()).collect()
}

/// Fixtures made by tests/fixtures/make_chat_fixtures.py: llama.cpp (through
/// llama-cpp-python) on the same GGUF, with the GGUF's Jinja template; and
/// llama.cpp's plainest greedy loop on this build as the oracle on any CPU.
#[test]
fn prompts_tokens_and_greedy_ids_match_llama_cpp() {
    let _turn = decoding_turn();
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/chat-smollm2-135m-instruct.json")).unwrap();
    let model = model();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    let ids = |value: &serde_json::Value| -> Vec<u32> {
        value.as_array().unwrap().iter().map(|id| id.as_u64().unwrap() as u32).collect()
    };
    let mut prompts = Vec::new();
    for case in cases {
        let messages: Vec<(String, String)> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| {
                (
                    message["role"].as_str().unwrap().to_owned(),
                    message["content"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let rendered = model.render(&messages, &[]).unwrap();
        // With tools, SmolLM2 (whose template has none) is told of them in
        // the system message, after the conversation's own system text.
        let tools = [serde_json::json!({"type": "function", "function": {"name": "get_weather"}})];
        let with_tools = model.render(&messages, &tools).unwrap();
        let listed = format!("<tools>\n{}\n</tools>", tools[0]);
        assert!(with_tools.contains(&listed) && !rendered.contains("<tools>"), "{with_tools}");
        if let Some((_, system)) = messages.iter().find(|(role, _)| role == "system") {
            assert!(with_tools.find(system.as_str()) < with_tools.find(&listed), "{with_tools}");
        }
        assert_eq!(
            rendered,
            case["prompt"].as_str().unwrap(),
            "the GGUF's template, rendered as the reference"
        );
        let prompt = model.tokenize(&rendered, true);
        assert_eq!(prompt, ids(&case["prompt_ids"]), "prompt tokens of {rendered:?}");
        prompts.push(prompt);
    }
    for text in fixture["texts"].as_array().unwrap() {
        assert_eq!(model.tokenize(text["text"].as_str().unwrap(), true), ids(&text["ids"]), "{text}");
    }
    let generated = fixture["generated"].as_u64().unwrap() as usize;
    // llama.cpp's kernels round differently on each CPU family: the
    // fixture holds the greedy ids of its AMX kernels and of its AVX-512
    // ones. On any CPU, llama.cpp's plainest greedy loop on this build is
    // the oracle as well.
    let expected: Vec<Vec<u32>> =
        prompts.iter().map(|prompt| model.reference_greedy(prompt, generated).unwrap()).collect();
    let recorded = if llama_has_amx() {
        Some("completion_ids")
    } else {
        std::arch::is_x86_feature_detected!("avx512f").then_some("completion_ids_without_amx")
    };
    if let Some(recorded) = recorded {
        let fixture_ids: Vec<Vec<u32>> = cases.iter().map(|case| ids(&case[recorded])).collect();
        assert_eq!(expected, fixture_ids, "llama.cpp's greedy loop here and the fixture's ({recorded})");
    }
    for (index, prompt) in prompts.iter().enumerate() {
        let alone = greedy_ids(&model, std::slice::from_ref(prompt), generated).remove(0);
        assert_eq!(alone, expected[index], "greedy ids of case {index} alone");
    }
    // Decoded together, the matrix products see several rows at once; the
    // greedy choices must not change.
    assert_eq!(greedy_ids(&model, &prompts, generated), expected, "greedy ids decoded together");
}

/// log softmax of `logits` at `id`, in f64: the test's own arithmetic.
fn log_softmax(logits: &[f32], id: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&logit| f64::from(logit - max).exp()).sum();
    f64::from(logits[id]) - f64::from(max) - sum.ln()
}

#[test]
fn logprobs_are_those_of_the_logits_llama_cpp_chose_from() {
    let _turn = decoding_turn();
    let model = model();
    let prompt = model
        .prompt_tokens(&[("user".to_owned(), "What is the capital of France?".to_owned())], &[])
        .unwrap();
    let mut reference = Vec::new();
    let ids = model
        .reference_greedy_logits(&prompt, 12, &mut |logits| {
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            let top: Vec<(usize, f64)> = order[..5].iter().map(|&id| (id, log_softmax(logits, id))).collect();
            reference.push(top);
        })
        .unwrap();
    let mut decoder = model.decoder(2, 1).unwrap();
    let params = SamplingParams { logprobs: Some(5), ..SamplingParams::greedy(12) };
    let mut sequence = decoder.start(0, &prompt, &params).unwrap();
    let mut logprobs = Vec::new();
    for _ in 0..64 {
        let progress = decoder.step(&mut [&mut sequence]).unwrap().remove(0);
        logprobs.extend(sequence.take_logprobs());
        if matches!(progress, Progress::Finished { .. }) {
            break;
        }
    }
    assert_eq!(sequence.generated_ids(), ids, "greedy, as llama.cpp's loop");
    assert_eq!(logprobs.len(), ids.len(), "one entry per generated token");
    for (step, (entry, expected)) in logprobs.iter().zip(&reference).enumerate() {
        // Greedy: the chosen token is the best one.
        assert!(
            (f64::from(entry.logprob) - expected[0].1).abs() < 1e-4,
            "step {step}: {entry:?} {expected:?}"
        );
        assert_eq!(entry.top.len(), 5);
        for (alternative, &(id, logprob)) in entry.top.iter().zip(expected) {
            assert_eq!(alternative.bytes, model.token_bytes(id as u32), "step {step}");
            assert!((f64::from(alternative.logprob) - logprob).abs() < 1e-4, "step {step}");
        }
    }
    decoder.release(&mut sequence);
}

#[test]
fn a_grammar_holds_the_engine_to_it_greedy_and_sampled() {
    let _turn = decoding_turn();
    let model = model();
    let prompt = model.prompt_tokens(&[("user".to_owned(), "Pick a number.".to_owned())], &[]).unwrap();
    let grammar = blaze_actors::inference::Grammar::from_regex(r"[0-9]{2}-(red|blue)").unwrap();
    let pattern = regex::Regex::new(r"^[0-9]{2}-(red|blue)$").unwrap();
    for temperature in [0.0, 1.0] {
        for seed in 0..3 {
            let params =
                SamplingParams { grammar: Some(grammar.clone()), ..params(40, temperature, seed, &[]) };
            let (text, reason, _) = complete(&model, &prompt, &params);
            assert!(pattern.is_match(&text), "{temperature} {seed}: {text:?}");
            assert_eq!(reason, FinishReason::Stop);
        }
    }
    assert!(model
        .check_grammar(&blaze_actors::inference::Grammar::from_gbnf("root ::= undefined").unwrap())
        .is_err());
}

/// Runs the choices of `prompt` (one per `params`) started together in one
/// decoder, beside a sequence of `other` started alone; with
/// `cancel_reader`, the choice that reads the prompt is released before
/// the first step. Each choice's text (`None` for the cancelled), then
/// the other sequence's.
fn complete_choices(
    model: &ChatModel,
    prompt: &[u32],
    params: &[SamplingParams],
    other: &[u32],
    cancel_reader: bool,
) -> (Vec<Option<String>>, String) {
    let count = params.len();
    let mut decoder = model.decoder(2, count + 1).unwrap();
    let slots: Vec<usize> = (0..count).collect();
    let mut sequences = decoder.start_choices(&slots, prompt, params).unwrap();
    sequences.push(decoder.start(count, other, &params[0]).unwrap());
    let mut texts = vec![Some(String::new()); count + 1];
    let mut done = vec![false; count + 1];
    if cancel_reader {
        decoder.release(&mut sequences[0]);
        (texts[0], done[0]) = (None, true);
    }
    for _ in 0..400 {
        let mut running: Vec<_> = sequences.iter_mut().filter(|sequence| !done[sequence.slot()]).collect();
        if running.is_empty() {
            let other = texts.pop().flatten().unwrap();
            return (texts, other);
        }
        let slots: Vec<usize> = running.iter().map(|sequence| sequence.slot()).collect();
        let progress = decoder.step(&mut running).unwrap();
        for (slot, progress) in slots.into_iter().zip(progress) {
            let text = texts[slot].as_mut().unwrap();
            match progress {
                Progress::Reading => {}
                Progress::Text(piece) => text.push_str(&piece),
                Progress::Finished { text: piece, .. } => {
                    text.push_str(&piece);
                    done[slot] = true;
                }
            }
        }
    }
    panic!("the choices did not finish in 400 steps: {texts:?}");
}

#[test]
fn choices_sharing_one_prompt_match_each_decoded_alone() {
    let _turn = decoding_turn();
    let model = model();
    let render = |question: &str| {
        model.tokenize(&model.render(&[("user".to_owned(), question.to_owned())], &[]).unwrap(), true)
    };
    let prompt = render("Write a short poem about the sea.");
    let other = render("Name a color.");
    let seeded: Vec<SamplingParams> = (7..10).map(|seed| params(20, 1.0, seed, &[])).collect();
    let alone: Vec<String> = seeded.iter().map(|params| complete(&model, &prompt, params).0).collect();
    let other_alone = complete(&model, &other, &seeded[0]).0;
    assert!(alone[0] != alone[1] || alone[1] != alone[2], "the seeds make different texts: {alone:?}");

    let (shared, other_beside) = complete_choices(&model, &prompt, &seeded, &other, false);
    let expected: Vec<Option<String>> = alone.iter().cloned().map(Some).collect();
    assert_eq!(shared, expected, "each choice as if it had read the prompt itself");
    assert_eq!(other_beside, other_alone, "a sequence of another prompt shares nothing");

    // The reader goes away before reading: another choice reads instead.
    let (orphans, _) = complete_choices(&model, &prompt, &seeded, &other, true);
    assert_eq!(orphans[1..], expected[1..], "the remaining choices are unchanged");
}
