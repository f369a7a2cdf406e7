//! `blaze-load`: runs load scenarios against Blaze or any OpenAI-compatible
//! server, and compares and renders their reports (see `blaze-load --help`).

fn main() {
    std::process::exit(blaze_load::cli::main_with(std::env::args()));
}
