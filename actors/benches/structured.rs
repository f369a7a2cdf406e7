//! Constrained decoding's cost: greedy decode tokens/s of one chat
//! completion under a JSON Schema grammar, against the same prompt
//! decoded freely, in one run (the ratio is the figure; the machine is
//! shared and noisy):
//!
//!     cargo bench --workspace --bench structured -- MODEL.gguf [--repeats 5] [--threads 2] [--max-tokens 256]
//!
//! Both rates count decoding only, from the first generated token to the
//! last; the prompt is read before the clock starts.
//!
//! Then the time to first token of a chat request with four tools (their
//! definitions rendered into the prompt, the lazy grammar of their calls
//! made and checked as the pipeline does) against the same question
//! without tools, prompt reading included.

use std::path::PathBuf;
use std::time::Instant;

use blaze_actors::inference::{ChatModel, Decoder, Grammar, Progress, SamplingParams, ToolFunction};
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

/// Four tools such as an assistant app sends.
fn tools() -> Vec<serde_json::Value> {
    let function = |name: &str, description: &str, properties: serde_json::Value, required: &[&str]| {
        serde_json::json!({"type": "function", "function": {"name": name, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required, "additionalProperties": false}}})
    };
    vec![
        function(
            "get_weather",
            "The weather in a city today.",
            serde_json::json!({
            "city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}}),
            &["city", "unit"],
        ),
        function(
            "search_web",
            "Searches the web and returns the top results.",
            serde_json::json!({
            "query": {"type": "string"}, "results": {"type": "integer", "minimum": 1, "maximum": 10}}),
            &["query"],
        ),
        function(
            "send_email",
            "Sends an email.",
            serde_json::json!({
            "to": {"type": "string", "format": "email"}, "subject": {"type": "string"}, "body": {"type": "string"}}),
            &["to", "subject", "body"],
        ),
        function(
            "create_event",
            "Adds an event to the calendar.",
            serde_json::json!({
            "title": {"type": "string"}, "date": {"type": "string", "format": "date"},
            "attendees": {"type": "array", "items": {"type": "string"}, "maxItems": 10}}),
            &["title", "date"],
        ),
    ]
}

/// The lazy grammar of calls to `tools`, as the pipeline makes it.
fn tools_grammar(model: &ChatModel, tools: &[serde_json::Value]) -> Result<Grammar, String> {
    let functions = tools
        .iter()
        .map(|tool| {
            let arguments = Grammar::from_json_schema(&tool["function"]["parameters"], false)
                .map_err(|error| error.to_string())?;
            Ok(ToolFunction {
                name: tool["function"]["name"].as_str().unwrap_or_default().to_owned(),
                arguments,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let grammar = Grammar::tool_calls(&functions, true, true).map_err(|error| error.to_string())?;
    model.check_grammar(&grammar).map_err(|error| error.to_string())?;
    Ok(grammar)
}

/// Seconds from a request's start to its first token: the tools' grammar
/// made (when it has tools), the prompt rendered, tokenized and read.
fn first_token(
    model: &ChatModel,
    decoder: &mut Decoder<'_>,
    question: &str,
    tools: &[serde_json::Value],
) -> Result<(f64, usize), String> {
    let started = Instant::now();
    let grammar = if tools.is_empty() { None } else { Some(tools_grammar(model, tools)?) };
    // A fresh conversation each time: the rendered prompt is not reused.
    let turns = [("user".to_owned(), format!("{question} ({})", started.elapsed().as_nanos()))];
    let prompt = model.prompt_tokens(&turns, tools).map_err(|error| error.to_string())?;
    let params = SamplingParams { grammar, ..SamplingParams::greedy(8) };
    let mut sequence = decoder.start(0, &prompt, &params).map_err(|error| error.to_string())?;
    let mut seconds = f64::INFINITY;
    for _ in 0..prompt.len() + 8 {
        match decoder.step(&mut [&mut sequence]).map_err(|error| error.to_string())?.remove(0) {
            Progress::Reading => {}
            _ => {
                seconds = started.elapsed().as_secs_f64();
                break;
            }
        }
    }
    decoder.release(&mut sequence);
    Ok((seconds, prompt.len()))
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
        .prompt_tokens(&[("user".to_owned(), QUESTION.to_owned())], &[])
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

    let tools = tools();
    let question = "What is the weather in Paris?";
    let (mut plain_times, mut tools_times, mut grammar_times) = (Vec::new(), Vec::new(), Vec::new());
    let (mut plain_tokens, mut tools_tokens) = (0, 0);
    for repeat in 0..=args.repeats {
        let (plain, tokens) = first_token(&model, &mut decoder, question, &[])?;
        let (with_tools, with_tokens) = first_token(&model, &mut decoder, question, &tools)?;
        let started = Instant::now();
        tools_grammar(&model, &tools)?;
        let grammar = started.elapsed().as_secs_f64();
        eprintln!(
            "# rep {repeat}: first token {:.1} ms ({tokens} prompt tokens), with 4 tools {:.1} ms ({with_tokens} prompt tokens; their grammar {:.2} ms)",
            plain * 1e3,
            with_tools * 1e3,
            grammar * 1e3
        );
        if repeat > 0 {
            plain_times.push(plain);
            tools_times.push(with_tools);
            grammar_times.push(grammar);
        }
        (plain_tokens, tools_tokens) = (tokens, with_tokens);
    }
    println!(
        "RESULT engine=blaze threads={} ttft_ms_median={:.1} ({plain_tokens} prompt tokens) ttft_4_tools_ms_median={:.1} ({tools_tokens} prompt tokens) tools_grammar_ms_median={:.2}",
        args.threads,
        median(plain_times) * 1e3,
        median(tools_times) * 1e3,
        median(grammar_times) * 1e3
    );
    Ok(())
}
