//! Constrained decoding's cost: greedy decode tokens/s of one chat
//! completion under a JSON Schema grammar, against the same prompt
//! decoded freely, in one run (the ratio is the figure; the machine is
//! shared and noisy):
//!
//!     cargo bench --workspace --bench structured -- MODEL.gguf [--repeats 5] [--threads 2] [--max-tokens 256]
//!
//! Both rates count decoding only, from the first generated token to the
//! last; the prompt is read before the clock starts.

use std::path::PathBuf;
use std::time::Instant;

use blaze_actors::inference::{ChatModel, Decoder, Grammar, Progress, SamplingParams};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "structured")]
struct Args {
    /// The .gguf file.
    model: PathBuf,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// `cargo bench` passes it; nothing to do.
    #[arg(long, hide = true)]
    bench: bool,
}

const QUESTION: &str =
    "Describe three people as JSON: for each, a name, an age, a city and up to three hobbies.";

fn schema() -> serde_json::Value {
    let text = serde_json::json!({"type": "string", "maxLength": 24});
    let person = serde_json::json!({
        "type": "object",
        "properties": {
            "name": text,
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": text,
            "hobbies": {"type": "array", "items": text, "maxItems": 3},
        },
        "required": ["name", "age", "city", "hobbies"],
        "additionalProperties": false,
    });
    serde_json::json!({"type": "array", "items": person, "minItems": 3, "maxItems": 3})
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Decode tokens/s of one greedy completion, and its tokens and text.
fn decode(
    decoder: &mut Decoder<'_>,
    prompt: &[u32],
    params: &SamplingParams,
) -> Result<(f64, usize, String), String> {
    let mut sequence = decoder.start(0, prompt, params).map_err(|error| error.to_string())?;
    let mut text = String::new();
    let mut started = None;
    let mut generated = 0;
    for _ in 0..params.max_tokens + 64 {
        let progress = decoder.step(&mut [&mut sequence]).map_err(|error| error.to_string())?.remove(0);
        match progress {
            Progress::Reading => {}
            Progress::Text(piece) => {
                // The first token comes with the prompt's last step.
                started.get_or_insert_with(Instant::now);
                generated += 1;
                text.push_str(&piece);
            }
            Progress::Finished { text: piece, completion_tokens, .. } => {
                text.push_str(&piece);
                generated = completion_tokens;
                break;
            }
        }
    }
    decoder.release(&mut sequence);
    let seconds = started.map_or(f64::INFINITY, |started| started.elapsed().as_secs_f64());
    Ok(((generated.saturating_sub(1)) as f64 / seconds, generated, text))
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.repeats == 0 || args.repeats > 50 || !(16..=1024).contains(&args.max_tokens) {
        return Err("repeats must be 1..=50 and max-tokens 16..=1024".to_owned());
    }
    let model = ChatModel::load(&args.model, 2048).map_err(|error| error.to_string())?;
    let prompt = model
        .prompt_tokens(&[("user".to_owned(), QUESTION.to_owned())])
        .map_err(|error| error.to_string())?;
    let mut decoder = model.decoder(args.threads, 1).map_err(|error| error.to_string())?;
    let free = SamplingParams::greedy(args.max_tokens);
    let grammar = Grammar::from_json_schema(&schema(), true).map_err(|error| error.to_string())?;
    let constrained = SamplingParams { grammar: Some(grammar), ..SamplingParams::greedy(args.max_tokens) };

    let (mut free_rates, mut constrained_rates) = (Vec::new(), Vec::new());
    let (mut free_tokens, mut constrained_tokens, mut sample) = (0, 0, String::new());
    // Alternated, so drift on the machine falls on both; the first round warms up.
    for repeat in 0..=args.repeats {
        let (free_rate, tokens, _) = decode(&mut decoder, &prompt, &free)?;
        let (constrained_rate, json_tokens, text) = decode(&mut decoder, &prompt, &constrained)?;
        eprintln!(
            "# rep {repeat}: free {free_rate:.1} tokens/s ({tokens} tokens), json_schema {constrained_rate:.1} tokens/s ({json_tokens} tokens)"
        );
        if repeat > 0 {
            free_rates.push(free_rate);
            constrained_rates.push(constrained_rate);
        }
        (free_tokens, constrained_tokens, sample) = (tokens, json_tokens, text);
    }
    serde_json::from_str::<serde_json::Value>(&sample)
        .map_err(|error| format!("not JSON: {error}: {sample}"))?;
    let (free, constrained) = (median(free_rates), median(constrained_rates));
    println!(
        "RESULT engine=blaze threads={} free_tg_tok_s_median={free:.1} ({free_tokens} tokens) json_schema_tg_tok_s_median={constrained:.1} ({constrained_tokens} tokens) ratio={:.2}",
        args.threads,
        constrained / free
    );
    Ok(())
}
