//! Prefix reuse on the real chat model: a prompt that starts with what a
//! free slot's cache holds reads only the rest, and what it generates is
//! the same as without reuse, greedy and seeded; over HTTP the next turn
//! of a conversation reports its cached tokens and answers as a server
//! without reuse does.

use blaze_actors::inference::{ChatModel, Decoder, Progress, SamplingParams};
use serde_json::{json, Value};

use crate::chat_engine::{decoding_turn, model, params};
use crate::common::{client, config_file, Server};

const MODEL: &str = "smollm2-135m-instruct";

/// Runs `prompt` alone in `slot` of `decoder` to its end; its text and the
/// prompt tokens it did not read.
fn run(decoder: &mut Decoder<'_>, slot: usize, prompt: &[u32], params: &SamplingParams) -> (String, usize) {
    let mut sequence = decoder.start(slot, prompt, params).unwrap();
    let cached = sequence.cached_tokens();
    let mut text = String::new();
    for _ in 0..2000 {
        match decoder.step(&mut [&mut sequence]).unwrap().remove(0) {
            Progress::Reading => {}
            Progress::Text(piece) => text.push_str(&piece),
            Progress::Finished { text: piece, .. } => {
                text.push_str(&piece);
                decoder.release(&mut sequence);
                return (text, cached);
            }
        }
    }
    panic!("no end in 2000 steps: {text}");
}

/// A conversation's turns: a long system message (past one 512-token
/// chunk of prompt reading), then questions answered by the model.
fn system() -> (String, String) {
    let rules: String = (1..=60).map(|rule| format!("Rule {rule}: answer briefly and politely. ")).collect();
    ("system".to_owned(), format!("You are a helpful assistant. {rules}"))
}

const QUESTIONS: [&str; 3] =
    ["What is the capital of France?", "And of Germany?", "Name one river that flows through both."];

/// Each turn's prompt and answer, with a decoder that keeps prompts (in
/// slot 1 of 2, the other slot holding an unrelated prompt) and one that
/// does not; returns both runs' answers and the cached counts.
fn conversation(
    model: &ChatModel,
    params: &SamplingParams,
) -> (Vec<String>, Vec<String>, Vec<(usize, usize)>) {
    let mut keeping = model.decoder(2, 2).unwrap();
    keeping.keep_prompts(true);
    let mut plain = model.decoder(2, 2).unwrap();
    let other = model.prompt_tokens(&[("user".to_owned(), "Say hi.".to_owned())], &[]).unwrap();
    run(&mut keeping, 0, &other, params);
    let (mut turns, mut reused_answers, mut plain_answers, mut counts) =
        (vec![system()], vec![], vec![], vec![]);
    for question in QUESTIONS {
        turns.push(("user".to_owned(), question.to_owned()));
        let prompt = model.prompt_tokens(&turns, &[]).unwrap();
        let expected = keeping.reusable(1, &prompt);
        if turns.len() > 2 {
            assert!(keeping.reusable(0, &prompt) < expected, "the other slot holds another prompt");
        }
        let (answer, cached) = run(&mut keeping, 1, &prompt, params);
        assert_eq!(cached, expected);
        let (plain_answer, plain_cached) = run(&mut plain, 1, &prompt, params);
        assert_eq!(plain_cached, 0, "a decoder that does not keep prompts reads all");
        counts.push((cached, prompt.len()));
        turns.push(("assistant".to_owned(), answer.clone()));
        reused_answers.push(answer);
        plain_answers.push(plain_answer);
    }
    (reused_answers, plain_answers, counts)
}

/// The log probabilities (chosen and top 5) of the first `steps` tokens of
/// `prompt` in slot 0, the tokens, and the prompt tokens not read.
fn logprobs(decoder: &mut Decoder<'_>, prompt: &[u32], steps: usize) -> (Vec<f32>, Vec<u32>, usize) {
    let mut sampling = params(steps, 0.0, 0, &[]);
    sampling.logprobs = Some(5);
    let mut sequence = decoder.start(0, prompt, &sampling).unwrap();
    let cached = sequence.cached_tokens();
    let mut values = Vec::new();
    for _ in 0..2000 {
        let progress = decoder.step(&mut [&mut sequence]).unwrap().remove(0);
        for entry in sequence.take_logprobs() {
            values.push(entry.logprob);
            values.extend(entry.top.iter().map(|alternative| alternative.logprob));
        }
        if matches!(progress, Progress::Finished { .. }) {
            break;
        }
    }
    let ids = sequence.generated_ids();
    decoder.release(&mut sequence);
    (values, ids, cached)
}

#[test]
fn reading_after_a_reused_prefix_gives_the_very_same_logits() {
    let _turn = decoding_turn();
    let model = model();
    let rules: String = (1..=70).map(|rule| format!("Rule {rule}: answer briefly and politely. ")).collect();
    let turns = [("system".to_owned(), rules), ("user".to_owned(), QUESTIONS[0].to_owned())];
    let prompt = model.prompt_tokens(&turns, &[]).unwrap();
    assert!(prompt.len() > 600, "{}", prompt.len());
    let cold = logprobs(&mut model.decoder(2, 1).unwrap(), &prompt, 4);
    // A prompt that was read up to `split` before: bit for bit the same,
    // whether the split falls on a chunk boundary or not.
    for split in [100, 511, 512, 600, prompt.len() - 2] {
        let mut decoder = model.decoder(2, 1).unwrap();
        decoder.keep_prompts(true);
        logprobs(&mut decoder, &prompt[..split], 1);
        let warm = logprobs(&mut decoder, &prompt, 4);
        assert_eq!((&warm.0, &warm.1), (&cold.0, &cold.1), "split at {split}");
        assert!(warm.2 + 1 >= split && warm.2 <= split, "split at {split}: {} reused", warm.2);
    }
    // What the model generated is read again, not reused.
    let mut decoder = model.decoder(2, 1).unwrap();
    decoder.keep_prompts(true);
    let generated = logprobs(&mut decoder, &prompt[..600], 20).1;
    let extended: Vec<u32> = prompt[..600].iter().chain(&generated).chain(&prompt[600..]).copied().collect();
    let warm = logprobs(&mut decoder, &extended, 4);
    let cold = logprobs(&mut model.decoder(2, 1).unwrap(), &extended, 4);
    assert_eq!((&warm.0, &warm.1), (&cold.0, &cold.1));
    assert!(warm.2 <= 600, "{} reused", warm.2);
}

#[test]
fn reused_prefixes_give_the_same_completions_greedy_and_seeded() {
    let _turn = decoding_turn();
    let model = model();
    for sampling in [params(40, 0.0, 0, &[]), params(40, 0.9, 7, &[])] {
        let (reused, plain, counts) = conversation(&model, &sampling);
        assert_eq!(reused, plain, "temperature {}", sampling.temperature);
        assert_eq!(counts[0].0, 0, "the first turn has nothing to reuse");
        for (turn, &(cached, prompt)) in counts.iter().enumerate().skip(1) {
            assert!(prompt > 512, "{prompt}");
            // All of the last turn's prompt (the answer the model
            // generated is read again), on AMX hosts too.
            let least = counts[turn - 1].1 - 1;
            assert!(cached >= least && cached < prompt, "turn {turn}: {cached} of {prompt} cached");
        }
    }

    // The same prompt again reuses all of it but its last token; an edited
    // history reuses up to the edit; both answer as read from scratch.
    let mut decoder = model.decoder(2, 1).unwrap();
    decoder.keep_prompts(true);
    let greedy = params(24, 0.0, 0, &[]);
    let turns = vec![system(), ("user".to_owned(), QUESTIONS[0].to_owned())];
    let prompt = model.prompt_tokens(&turns, &[]).unwrap();
    let (first, _) = run(&mut decoder, 0, &prompt, &greedy);
    let (again, cached) = run(&mut decoder, 0, &prompt, &greedy);
    assert_eq!(again, first);
    // Not its last token alone: reading it among others rounds as
    // reading the whole prompt does.
    assert_eq!(cached, prompt.len() - 2);
    let edited = vec![system(), ("user".to_owned(), "What is the capital of Spain?".to_owned())];
    let edited = model.prompt_tokens(&edited, &[]).unwrap();
    let (answer, cached) = run(&mut decoder, 0, &edited, &greedy);
    let common = prompt.iter().zip(&edited).take_while(|(a, b)| a == b).count();
    assert!(cached <= common, "{cached} cached, {common} in common");
    let mut fresh = model.decoder(2, 1).unwrap();
    assert_eq!(answer, run(&mut fresh, 0, &edited, &greedy).0);
}

async fn chat(server: &Server, messages: &Value, extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": messages, "max_tokens": 24});
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .header("cache-control", "no-cache")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Three turns over HTTP, greedy and seeded, JSON and streamed (the
/// stream's usage chunk): each answer and the cached counts.
async fn turns(server: &Server) -> Vec<(String, u64)> {
    let mut outcomes = Vec::new();
    for sampling in [json!({"temperature": 0}), json!({"temperature": 0.9, "seed": 11})] {
        let mut messages = vec![json!({"role": "system", "content": system().1})];
        for question in QUESTIONS {
            messages.push(json!({"role": "user", "content": question}));
            let answer = chat(server, &json!(messages), sampling.clone()).await;
            let text = answer["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
            let cached = answer["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
            assert!(cached < answer["usage"]["prompt_tokens"].as_u64().unwrap(), "{answer}");
            messages.push(json!({"role": "assistant", "content": text}));
            outcomes.push((text, cached));
        }
    }
    outcomes
}

#[tokio::test]
async fn the_next_turn_reports_its_cached_tokens_and_answers_as_without_reuse() {
    let _turn = crate::common::decoding_turn().await;
    let with = {
        let server = Server::start(&[], &[]).await;
        turns(&server).await
    };
    let file = config_file(&format!("models:\n  catalog:\n    {MODEL}:\n      prefix_reuse: false\n"));
    let without = {
        let server = Server::start(&[], &["--config", file.path().to_str().unwrap()]).await;
        turns(&server).await
    };
    let texts =
        |outcomes: &[(String, u64)]| outcomes.iter().map(|(text, _)| text.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&with), texts(&without));
    assert!(without.iter().all(|(_, cached)| *cached == 0), "{without:?}");
    for (turn, (_, cached)) in with.iter().enumerate() {
        if turn % QUESTIONS.len() != 0 {
            assert!(*cached > 0, "turn {turn} reused nothing: {with:?}");
        }
    }
}
