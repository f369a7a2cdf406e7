//! The `blaze-load` command line: `run`, `list`, `check`, `compare` and
//! `report`. Exit codes: 0 done (thresholds met, no regression), 1 a
//! regression found by `compare`, 2 bad input (a scenario, a flag, a file),
//! 3 a threshold not met.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::compare::CompareError;
use crate::engine::{self, Progress, RunError, RunOptions, Target, TargetError};
use crate::reference::ReferenceError;
use crate::report::{Report, ReportError};
use crate::scenario::{self, Overrides, Scenario, ScenarioError};
use crate::template::VariableError;

pub const EXIT_REGRESSION: i32 = 1;
pub const EXIT_BAD_INPUT: i32 = 2;
pub const EXIT_THRESHOLD: i32 = 3;

/// Why a command could not do its work; printed after `blaze-load: `, and
/// the command exits 2 (bad input).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Variable(#[from] VariableError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Compare(#[from] CompareError),
    #[error("--threads: 1 to 256")]
    Threads { threads: usize },
    #[error(
        "blaze-reference is not beside blaze-load: build it (cargo build --release -p blaze-load) or give --reference"
    )]
    NoReferenceBinary,
}

#[derive(Debug, Parser)]
#[command(name = "blaze-load", version, about = "Blaze's load suite: scenarios, drivers and reports")]
struct Arguments {
    #[command(subcommand)]
    command: Command,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("`{text}`: {error} (say 10s, 500ms, 2m)"))
}

fn parse_variable(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("`{text}`: say name=value"))
}

#[derive(Debug, clap::Args)]
struct RunArguments {
    /// A bundled scenario's name (see `list`) or a YAML file.
    scenario: String,
    /// The server to load: Blaze or any OpenAI-compatible server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// The API key sent as a bearer token.
    #[arg(long, env = "BLAZE_LOAD_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Allows a target that is not this machine.
    #[arg(long)]
    allow_remote: bool,
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Closed model: virtual users. Open model: connections.
    #[arg(long)]
    users: Option<usize>,
    /// Open model: requests per second.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long)]
    connections: Option<usize>,
    #[arg(long)]
    max_requests: Option<u64>,
    /// Sets a scenario variable: --var chat_model=gpt-4o-mini.
    #[arg(long = "var", value_parser = parse_variable)]
    variables: Vec<(String, String)>,
    /// Writes the JSON report there.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Writes the HTML report there.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Also runs the `baseline` scenario on the bare reference server
    /// first, and shows every figure as a ratio to it.
    #[arg(long)]
    baseline: bool,
    /// The reference server's binary (default: blaze-reference beside
    /// this one).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The load generator's threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a scenario.
    Run(Box<RunArguments>),
    /// Lists the bundled scenarios.
    List,
    /// Checks scenario files without running them.
    Check { scenarios: Vec<String> },
    /// Compares two JSON reports; exits 1 on a regression.
    Compare {
        base: PathBuf,
        new: PathBuf,
        /// How much worse a figure may get: 10% (throughput down, latency up).
        #[arg(long, default_value = "10%")]
        max_regression: String,
        /// How many points the error ratio may rise: 0.1% by default.
        #[arg(long, default_value = "0.1%")]
        max_error_increase: String,
    },
    /// Renders a JSON report as HTML again.
    Report {
        json: PathBuf,
        #[arg(long)]
        html: PathBuf,
    },
}

/// Runs the command line; returns the exit code.
pub fn main_with<I: IntoIterator<Item = String>>(arguments: I) -> i32 {
    let arguments = match Arguments::try_parse_from(arguments) {
        Ok(arguments) => arguments,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { EXIT_BAD_INPUT } else { 0 };
        }
    };
    let result = match arguments.command {
        Command::Run(run) => run_command(*run),
        Command::List => {
            for (name, text) in scenario::BUNDLED {
                let description = Scenario::parse(text, &Overrides::default())
                    .map(|scenario| scenario.description)
                    .unwrap_or_default();
                println!("{name:<16} {description}");
            }
            Ok(0)
        }
        Command::Check { scenarios } => check(&scenarios),
        Command::Compare { base, new, max_regression, max_error_increase } => {
            compare_command(&base, &new, &max_regression, &max_error_increase)
        }
        Command::Report { json, html } => Report::read(&json)
            .and_then(|report| report.write_html(&html))
            .map(|()| 0)
            .map_err(CliError::from),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("blaze-load: {message}");
            EXIT_BAD_INPUT
        }
    }
}

fn check(scenarios: &[String]) -> Result<i32, CliError> {
    let mut failed = false;
    for name in scenarios {
        match scenario::source(name).and_then(|text| Scenario::parse(&text, &Overrides::default())) {
            Ok(scenario) => println!("{name}: ok ({} requests)", scenario.requests.len()),
            Err(problem) => {
                failed = true;
                eprintln!("{name}: {problem}");
            }
        }
    }
    Ok(if failed { EXIT_BAD_INPUT } else { 0 })
}

fn compare_command(
    base: &std::path::Path,
    new: &std::path::Path,
    max_regression: &str,
    max_error: &str,
) -> Result<i32, CliError> {
    let max_regression = crate::compare::parse_share(max_regression)?;
    let max_error = crate::compare::parse_share(max_error)?;
    let (base, new) = (Report::read(base)?, Report::read(new)?);
    if base.scenario != new.scenario {
        return Err(CompareError::DifferentScenarios { base: base.scenario, new: new.scenario }.into());
    }
    let comparison = crate::compare::compare(&base, &new, max_regression, max_error);
    print!("{}", comparison.table());
    Ok(if comparison.regressed() { EXIT_REGRESSION } else { 0 })
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Runs one scenario to its report.
pub fn run_scenario(
    scenario: Scenario,
    target: Target,
    key: Option<String>,
    threads: usize,
    quiet: bool,
) -> Result<Report, RunError> {
    let started_at = now_rfc3339();
    let url = target.url.clone();
    let options =
        RunOptions { target, key, threads, progress: if quiet { Progress::Off } else { Progress::Auto } };
    let scenario = std::sync::Arc::new(scenario);
    let measured = engine::run(scenario.clone(), options)?;
    Ok(Report::new(&scenario, &url, started_at, measured))
}

fn reference_binary(given: Option<PathBuf>) -> Result<PathBuf, CliError> {
    given.or_else(crate::reference::beside_this_binary).ok_or(CliError::NoReferenceBinary)
}

fn run_command(arguments: RunArguments) -> Result<i32, CliError> {
    let overrides = Overrides {
        duration: arguments.duration,
        warmup: arguments.warmup,
        users: arguments.users,
        rate: arguments.rate,
        connections: arguments.connections,
        max_requests: arguments.max_requests,
        variables: arguments.variables.clone(),
    };
    let mut overrides = overrides;
    // The run's key is the `api_key` variable too (the auth-flow scenario
    // exchanges it for tokens), unless --var sets it.
    if let Some(key) = &arguments.key {
        if !overrides.variables.iter().any(|(name, _)| name == "api_key") {
            overrides.variables.push(("api_key".to_owned(), key.clone()));
        }
    }
    let scenario = Scenario::parse(&scenario::source(&arguments.scenario)?, &overrides)?;
    if let Some(problem) = scenario.variables.iter().find_map(|variable| variable.unset()) {
        return Err(problem.into());
    }
    let threads = arguments
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |cores| cores.get()));
    if !(1..=256).contains(&threads) {
        return Err(CliError::Threads { threads });
    }
    let needs_reference = scenario.against_reference || arguments.baseline;
    let reference = if needs_reference {
        Some(crate::reference::ReferenceServer::start(&reference_binary(arguments.reference.clone())?)?)
    } else {
        None
    };
    let baseline = match (&reference, arguments.baseline && !scenario.against_reference) {
        (Some(reference), true) => {
            let baseline_overrides =
                Overrides { duration: arguments.duration, warmup: arguments.warmup, ..Overrides::default() };
            let baseline = Scenario::parse(&scenario::source("baseline")?, &baseline_overrides)?;
            if !arguments.quiet {
                eprintln!("baseline: {} on {}", baseline.name, reference.url);
            }
            let target = Target::parse(&reference.url, false)?;
            Some(run_scenario(baseline, target, None, threads, arguments.quiet)?)
        }
        _ => None,
    };
    let target = match (&reference, scenario.against_reference) {
        (Some(reference), true) => Target::parse(&reference.url, false)?,
        _ => Target::parse(&arguments.target, arguments.allow_remote)?,
    };
    let uses_key = scenario.requests.iter().any(|request| matches!(request.auth, crate::scenario::Auth::Key));
    if arguments.key.is_none() && uses_key && !scenario.against_reference {
        eprintln!("blaze-load: no key (--key or BLAZE_LOAD_KEY): requests go without Authorization");
    }
    let mut report = run_scenario(scenario, target, arguments.key.clone(), threads, arguments.quiet)?;
    drop(reference);
    if let Some(baseline) = &baseline {
        report.set_baseline(baseline);
    }
    print!("{}", report.table());
    if let Some(path) = &arguments.json {
        report.write_json(path)?;
    }
    if let Some(path) = &arguments.html {
        report.write_html(path)?;
    }
    Ok(if report.passed { 0 } else { EXIT_THRESHOLD })
}
