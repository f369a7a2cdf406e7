//! In-process embedding throughput, printed like the reference scripts in
//! ../shared/anchors print theirs, so the figures sit side by side.
//!
//!     cargo bench --workspace --bench embed -- MODEL_DIR FILE LABEL 1,8,32 [--sentences N] [--repeats N] [--threads N] [--kernels K,...]
//!
//! `--kernels` runs each named path (amx, avx512bf16, avx512vnni, avx2, generic; default: the one
//! Blaze would pick) in turn, alternating rounds, so their figures come
//! from one run.

use std::path::PathBuf;
use std::time::Instant;

use blaze_actors::inference::{Bert, EmbeddingEngine, Kernels};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "embed")]
struct Args {
    /// The model's directory (config.json, tokenizer.json, model.safetensors).
    model: PathBuf,
    /// One sentence per line.
    inputs: PathBuf,
    /// A label for the inputs, printed with each result.
    label: String,
    /// Batch sizes, comma-separated.
    #[arg(value_delimiter = ',')]
    batches: Vec<usize>,
    #[arg(long, default_value_t = 256)]
    sentences: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Kernel paths to compare (names as BLAZE_KERNELS takes them).
    #[arg(long, value_delimiter = ',')]
    kernels: Vec<String>,
    /// `cargo bench` passes it; nothing to do.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.sentences == 0 || args.sentences > 100_000 || args.repeats == 0 || args.repeats > 100 {
        return Err("sentences must be 1..=100000 and repeats 1..=100".to_owned());
    }
    let kernels: Vec<Kernels> = if args.kernels.is_empty() {
        vec![Kernels::configured()?]
    } else {
        args.kernels
            .iter()
            .map(|name| {
                Kernels::ALL
                    .into_iter()
                    .find(|kernels| kernels.name() == name)
                    .ok_or_else(|| format!("unknown kernels {name:?}"))
            })
            .collect::<Result<_, _>>()?
    };
    let engines: Vec<Bert> = kernels
        .iter()
        .map(|&kernels| Bert::load_with_kernels(&args.model, args.threads, kernels))
        .collect::<Result<_, _>>()
        .map_err(|error| error.to_string())?;
    let text = std::fs::read_to_string(&args.inputs).map_err(|error| error.to_string())?;
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    if lines.is_empty() {
        return Err("no sentences in the inputs".to_owned());
    }
    let data: Vec<&str> = lines.iter().cycle().take(args.sentences).copied().collect();
    for &batch in &args.batches {
        let batch = batch.max(1);
        let run = |engine: &Bert| -> Result<f64, String> {
            let started = Instant::now();
            for chunk in data.chunks(batch) {
                let tokens: Vec<Vec<u32>> = chunk
                    .iter()
                    .map(|line| engine.tokenize(line))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
                let views: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
                engine.embed(&views).map_err(|error| error.to_string())?;
            }
            Ok(data.len() as f64 / started.elapsed().as_secs_f64())
        };
        let mut rates = vec![Vec::with_capacity(args.repeats); engines.len()];
        for engine in &engines {
            run(engine)?;
        }
        // Rounds alternate between the paths, so a noisy moment of the
        // machine falls on all of them alike.
        for _ in 0..args.repeats {
            for (engine, rates) in engines.iter().zip(&mut rates) {
                rates.push(run(engine)?);
            }
        }
        for (engine, mut rates) in engines.iter().zip(rates) {
            rates.sort_by(f64::total_cmp);
            let median = rates[rates.len() / 2];
            let all: Vec<String> = rates.iter().map(|rate| format!("{rate:.1}")).collect();
            println!(
                "RESULT engine=blaze kernels={} input={} bs={batch} n={} threads={} sent_per_s_median={median:.1} all=[{}]",
                engine.kernels(),
                args.label,
                data.len(),
                args.threads,
                all.join(", ")
            );
        }
    }
    Ok(())
}
