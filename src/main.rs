use std::process::ExitCode;

fn main() -> ExitCode {
    blaze::cli::run()
}
