//! The semantic cache's index: one lookup (an exact scan of a group of
//! unit vectors, then the vetoes on the best few) against groups of 1,000
//! and 10,000 entries of 384 dimensions (all-minilm-l6-v2's), and an
//! insert past the bound; microseconds per call.
//!
//!     cargo bench --workspace --bench semantic -- [--dimensions 384] [--lookups 2000]

use std::time::Instant;

use blaze_actors::cache::{SemanticEntry, SemanticIndex};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "semantic")]
struct Args {
    #[arg(long, default_value_t = 384)]
    dimensions: usize,
    #[arg(long, default_value_t = 2000)]
    lookups: usize,
    /// `cargo bench` passes it; nothing to do.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A unit vector that depends on `seed` only (no RNG needed).
fn vector(seed: usize, dimensions: usize) -> Vec<f32> {
    let raw: Vec<f32> =
        (0..dimensions).map(|index| ((seed * 7919 + index * 104_729) as f32 * 0.001).sin()).collect();
    let norm = raw.iter().map(|value| value * value).sum::<f32>().sqrt();
    raw.into_iter().map(|value| value / norm).collect()
}

fn main() {
    let args = Args::parse();
    println!("semantic index, {} dimensions, {} lookups per size", args.dimensions, args.lookups);
    for entries in [1_000usize, 10_000] {
        let index = SemanticIndex::new(entries);
        for seed in 0..entries {
            index.insert(SemanticEntry {
                fingerprint: 1,
                text: format!("cached question {seed}").into(),
                vector: vector(seed, args.dimensions),
            });
        }
        let queries: Vec<Vec<f32>> = (0..64).map(|seed| vector(seed * 31 + 7, args.dimensions)).collect();
        let started = Instant::now();
        let mut hits = 0usize;
        for lookup in 0..args.lookups {
            let query = &queries[lookup % queries.len()];
            hits += usize::from(index.nearest(1, query, "a question", 0.9).is_some());
        }
        let lookup_us = started.elapsed().as_secs_f64() * 1e6 / args.lookups as f64;
        let started = Instant::now();
        for seed in 0..args.lookups {
            index.insert(SemanticEntry {
                fingerprint: 1,
                text: format!("new question {seed}").into(),
                vector: vector(entries + seed, args.dimensions),
            });
        }
        let insert_us = started.elapsed().as_secs_f64() * 1e6 / args.lookups as f64;
        println!(
            "  {entries:>6} entries in one group: lookup {lookup_us:8.1} us, insert past the bound {insert_us:8.1} us ({hits} hits)"
        );
    }
}
