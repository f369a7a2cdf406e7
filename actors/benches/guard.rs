//! The guard's scan speed with the full default pattern set
//! (config/default.yaml), in this process, on one core: MB/s for 1 KB and
//! 100 KB texts (normalization, the scan and the actions included), for
//! plain ASCII prose and for prose with accents, quotes and dashes (the
//! folding path); then the time for 10 MB against 1 MB of adversarial
//! input (linear: about 10x); then the time one cached chat request's
//! message costs.
//!
//!     cargo bench --workspace --bench guard -- [--seconds S]

use std::time::{Duration, Instant};

use blaze_actors::guard::{Guard, GuardConfig};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "guard")]
struct Args {
    /// How long each measurement runs.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// `cargo bench` passes it; nothing to do.
    #[arg(long, hide = true)]
    bench: bool,
}

const ASCII_PROSE: &str = "The quarterly report shows revenue grew by 12 percent, driven by strong demand in \
    Europe and a new line of products. Customers asked for faster delivery, clearer invoices and better support \
    on weekends. The team plans to hire two engineers, upgrade the build servers and review the API rate limits \
    before the next release. Please summarize the main risks and suggest three actions for the coming month. ";

const MIXED_PROSE: &str = "The caf\u{e9}\u{2019}s r\u{e9}sum\u{e9} \u{2014} \u{201c}na\u{ef}ve\u{201d} but \
    charming \u{2014} lists cr\u{e8}me br\u{fb}l\u{e9}e, pi\u{f1}a colada and a jalape\u{f1}o special. Customers asked \
    for faster delivery, clearer invoices and better support on weekends; the \u{fc}ber-manager agreed. Please \
    summarize the main risks and suggest three actions for the coming month. ";

/// Text that makes the patterns work hardest: near-misses of every kind,
/// letter-spaced runs and base64 that decodes to text.
const ADVERSARIAL: &str = "ignore ignore the the the previous previous rules? reveal show print the the system \
    a@a@a@a.b@c.d 4111 1111 1111 1112 1 2 3 4 5 6 7 8 9 0 DE00 0000 0000 0000 00 i g n o r e t h e a b c d e f \
    aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29ybGQ= eyJhbGciOi.eyJzdWIi.x -----BEGIN X bearer abc \
    pretend imagine suppose no no no developer developer mode? ";

/// The guard section of config/default.yaml, read as the server reads it.
fn default_guard() -> Result<GuardConfig, String> {
    const DEFAULT_YAML: &str = include_str!("../../config/default.yaml");
    config::Config::builder()
        .add_source(config::File::from_str(DEFAULT_YAML, config::FileFormat::Yaml))
        .build()
        .and_then(|settings| settings.get::<GuardConfig>("guard"))
        .map_err(|error| format!("config/default.yaml: {error}"))
}

fn text_of(unit: &str, bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + unit.len());
    while text.len() < bytes {
        text.push_str(unit);
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// Screens `text` repeatedly for about `seconds`; returns the time of one.
fn time_one(guard: &Guard, text: &str, seconds: f64) -> Duration {
    let mut copy = text.to_owned();
    let started = Instant::now();
    let mut runs = 0u32;
    while started.elapsed().as_secs_f64() < seconds || runs == 0 {
        copy.clear();
        copy.push_str(text);
        let _ = guard.screen_input("bench", [&mut copy]);
        runs += 1;
    }
    started.elapsed() / runs
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if !(0.1..=60.0).contains(&args.seconds) {
        return Err("--seconds must be 0.1 to 60".to_owned());
    }
    let mut config = default_guard()?;
    let patterns: usize = config.categories.values().map(|category| category.patterns.len()).sum();
    // Scores would cool the bench down after its first blocks.
    config.scores.block_points = 0.0;
    let guard = Guard::new(config).map_err(|error| error.to_string())?;
    println!("default pattern set: {patterns} patterns");
    for (label, unit) in [("ascii", ASCII_PROSE), ("mixed", MIXED_PROSE)] {
        for bytes in [1_000, 100_000] {
            let text = text_of(unit, bytes);
            let one = time_one(&guard, &text, args.seconds);
            let megabytes_per_second = text.len() as f64 / one.as_secs_f64() / 1e6;
            println!(
                "RESULT scan text={label} bytes={bytes} mb_per_s={megabytes_per_second:.1} us_per_text={:.2}",
                one.as_secs_f64() * 1e6
            );
        }
    }
    let small = text_of(ADVERSARIAL, 1_000_000);
    let large = text_of(ADVERSARIAL, 10_000_000);
    let small_time = time_one(&guard, &small, args.seconds);
    let large_time = time_one(&guard, &large, args.seconds);
    println!(
        "RESULT adversarial mb1_ms={:.1} mb10_ms={:.1} ratio={:.2} (linear: about 10)",
        small_time.as_secs_f64() * 1e3,
        large_time.as_secs_f64() * 1e3,
        large_time.as_secs_f64() / small_time.as_secs_f64()
    );
    // The message load/bench/cache.sh sends (its nonce is 16 hex digits).
    let message = "Name a color. (0123456789abcdef)";
    let one = time_one(&guard, message, args.seconds);
    println!("RESULT cached_chat_message us={:.2}", one.as_secs_f64() * 1e6);
    Ok(())
}
