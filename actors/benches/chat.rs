//! In-process chat engine speed on the prompt ids that
//! ../shared/anchors/bench_llama.py writes, printed like that script prints
//! llama.cpp's, so the figures sit side by side:
//!
//!     cargo bench --workspace --bench chat -- MODEL.gguf PROMPT_IDS [--generate 128] [--repeats 3] [--threads 2] [--streams 8]
//!         [--context-length 2048]
//!
//! One sequence: prompt processing (the prompt read in one step) and greedy
//! decoding tokens/s. Then STREAMS sequences decoded together in one
//! decoder (continuous batching): aggregate decode tokens/s and its ratio
//! to the one sequence's rate.

use std::path::PathBuf;
use std::time::Instant;

use blaze_actors::inference::{ChatModel, Decoder, Progress, SamplingParams, Sequence};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "chat")]
struct Args {
    /// The .gguf file.
    model: PathBuf,
    /// The prompt's token ids, space-separated (as bench_llama.py writes them).
    prompt_ids: PathBuf,
    #[arg(long, default_value_t = 128)]
    generate: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Sequences decoded together in the batched run (0: skip it).
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Tokens per sequence in the KV cache; the server's default.
    #[arg(long, default_value_t = 2048)]
    context_length: usize,
    /// `cargo bench` passes it; nothing to do.
    #[arg(long, hide = true)]
    bench: bool,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Steps `sequences` until every one has finished; returns the tokens
/// generated and the seconds spent after each one's first token.
fn run_together(decoder: &mut Decoder<'_>, sequences: &mut [Sequence]) -> Result<(usize, f64), String> {
    let mut finished = vec![false; sequences.len()];
    let mut first_token: Option<Instant> = None;
    let mut generated = 0;
    for _ in 0..100_000 {
        let mut running: Vec<&mut Sequence> = sequences
            .iter_mut()
            .zip(&finished)
            .filter(|(_, done)| !**done)
            .map(|(sequence, _)| sequence)
            .collect();
        if running.is_empty() {
            break;
        }
        let slots: Vec<usize> = running.iter().map(|sequence| sequence.slot()).collect();
        let progress = decoder.step(&mut running).map_err(|error| error.to_string())?;
        if first_token.is_none() && !progress.contains(&Progress::Reading) {
            // Every stream has its first token: decoding starts now.
            first_token = Some(Instant::now());
        }
        for (slot, progress) in slots.into_iter().zip(progress) {
            if let Progress::Finished { completion_tokens, .. } = progress {
                finished[slot] = true;
                generated += completion_tokens;
            }
        }
    }
    for sequence in sequences.iter_mut() {
        decoder.release(sequence);
    }
    Ok((generated, first_token.map_or(0.0, |first| first.elapsed().as_secs_f64())))
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.generate == 0
        || args.generate > 4096
        || args.repeats == 0
        || args.repeats > 50
        || args.streams > 64
        || !(16..=8192).contains(&args.context_length)
        || args.context_length < args.generate + 256
    {
        return Err(
            "generate must be 1..=4096, repeats 1..=50, streams 0..=64 and context-length 16..=8192, \
             at least generate + 256"
                .to_owned(),
        );
    }
    let prompt: Vec<u32> = std::fs::read_to_string(&args.prompt_ids)
        .map_err(|error| error.to_string())?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|error| format!("prompt ids: {error}"))?;
    let model = ChatModel::load(&args.model, args.context_length).map_err(|error| error.to_string())?;
    let mut decoder = model.decoder(args.threads, args.streams.max(1)).map_err(|error| error.to_string())?;

    let (mut prompt_rates, mut decode_rates, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for repeat in 0..=args.repeats {
        let mut sequence = decoder
            .start(0, &prompt, &SamplingParams::greedy(args.generate + 1))
            .map_err(|error| error.to_string())?;
        let started = Instant::now();
        decoder.step(&mut [&mut sequence]).map_err(|error| error.to_string())?;
        let prompt_rate = prompt.len() as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut generated = 0;
        while generated < args.generate {
            match decoder.step(&mut [&mut sequence]).map_err(|error| error.to_string())?.remove(0) {
                Progress::Finished { .. } => break,
                _ => generated += 1,
            }
        }
        let decode_rate = generated as f64 / started.elapsed().as_secs_f64();
        eprintln!("# rep {repeat}: pp {prompt_rate:.1} tg {decode_rate:.1} ({generated} tokens)");
        if repeat > 0 {
            prompt_rates.push(prompt_rate);
            decode_rates.push(decode_rate);
        }
        ids = sequence.generated_ids();
        decoder.release(&mut sequence);
    }
    let one_stream = median(decode_rates);
    println!(
        "RESULT engine=blaze threads={} prompt={} gen={} pp_tok_s_median={:.1} tg_tok_s_median={one_stream:.1}",
        args.threads,
        prompt.len(),
        args.generate,
        median(prompt_rates)
    );
    println!("GEN_IDS {}", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));

    if args.streams > 0 {
        let mut rates = Vec::new();
        for repeat in 0..=args.repeats {
            // Each stream starts from the same prompt read once per stream;
            // the rate counts decoding only, after the first token.
            let mut sequences = (0..args.streams)
                .map(|slot| decoder.start(slot, &prompt, &SamplingParams::greedy(args.generate)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| error.to_string())?;
            let (generated, seconds) = run_together(&mut decoder, &mut sequences)?;
            let rate = (generated - args.streams) as f64 / seconds;
            eprintln!("# batched rep {repeat}: {} streams, {rate:.1} tokens/s in all", args.streams);
            if repeat > 0 {
                rates.push(rate);
            }
        }
        let aggregate = median(rates);
        println!(
            "RESULT engine=blaze streams={} aggregate_tg_tok_s_median={aggregate:.1} ratio_to_one_stream={:.2}",
            args.streams,
            aggregate / one_stream
        );
    }
    Ok(())
}
