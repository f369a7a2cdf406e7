//! The guard with the full default pattern set: arbitrary text screened
//! as input (normalized view, windows, decoders, redaction) and streamed
//! as output through the holdback filter in pieces of varying size. Never
//! a panic; a stream with nothing redacted comes out byte for byte as it
//! went in (the filter loses and repeats nothing).

#![no_main]

use std::sync::{Arc, LazyLock};

use blaze::settings::{ConfigSources, Settings};
use blaze_actors::guard::{Guard, OutputFilter};
use libfuzzer_sys::fuzz_target;

static GUARD: LazyLock<Arc<Guard>> = LazyLock::new(|| {
    let settings = Settings::load(&ConfigSources::default())
        .unwrap_or_else(|errors| panic!("the default configuration does not load: {errors:?}"));
    let mut config = settings.guard;
    config.scan_output = true;
    // Blocks would otherwise cool the one fuzzing client down.
    config.scores.block_points = 0.0;
    // A small holdback, so that matches run across pieces often.
    config.output_holdback_bytes = 32;
    Guard::new(config).unwrap_or_else(|error| panic!("the default patterns do not compile: {error}"))
});

fuzz_target!(|data: &[u8]| {
    let Some((&piece_seed, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest).into_owned();

    let mut input = text.clone();
    if GUARD.screen_input("fuzz", [&mut input]).is_ok_and(|screening| screening.redacted.is_empty()) {
        assert_eq!(input, text, "input changed with nothing redacted");
    }

    let mut whole = text.clone();
    let _ = GUARD.screen_output(&mut whole);

    let mut filter = OutputFilter::new(GUARD.rules());
    let piece_bytes = usize::from(piece_seed % 64) + 1;
    let mut streamed = String::new();
    let mut start = 0;
    let mut blocked = false;
    while start < text.len() && !blocked {
        let mut end = (start + piece_bytes).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        match filter.push(&text[start..end]) {
            Ok(out) => streamed.push_str(&out),
            Err(_) => blocked = true,
        }
        start = end;
    }
    if !blocked {
        match filter.finish() {
            Ok(out) => streamed.push_str(&out),
            Err(_) => blocked = true,
        }
    }
    if !blocked && filter.screening().redacted.is_empty() {
        assert_eq!(streamed, text, "stream changed with nothing redacted");
    }
});
