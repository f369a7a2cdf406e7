//! The command line: `blaze serve`, `blaze models`, `blaze health`,
//! `blaze config check`, `--version`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::models::Progress;
use crate::probe::Probe;
use crate::settings::{ConfigSources, Settings};

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BLAZE_GIT_SHA"),
    ", ",
    env!("BLAZE_RUSTC_VERSION"),
    ", ",
    env!("BLAZE_BUILD_PROFILE"),
    " build)"
);

/// Blaze: an OpenAI-compatible API in front of local inference workers.
#[derive(Debug, Parser)]
#[command(name = "blaze", version, long_version = LONG_VERSION, propagate_version = true)]
pub struct Cli {
    /// A YAML file layered over config/default.yaml and the profile.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// A profile overlay: development, production, gpu or minimal.
    #[arg(long, global = true, env = "BLAZE_PROFILE", value_name = "NAME")]
    profile: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server until SIGTERM or SIGINT; pulls missing models first.
    Serve {
        /// Do not pull missing models; fail if one is missing.
        #[arg(long)]
        offline: bool,
    },
    /// Manage the model cache.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Ask a running Blaze whether it is alive (`/health`) or, with
    /// `--ready`, ready (`/health/ready`); exit 0 on 200, 1 otherwise. For
    /// container health checks: the address comes from the same
    /// configuration as `serve` (a wildcard host is reached over loopback).
    Health {
        /// Ask `/health/ready` instead of `/health`.
        #[arg(long)]
        ready: bool,
        /// `host:port` to ask instead of the configured one.
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
        /// Seconds to wait for the connection and the answer.
        #[arg(long, default_value_t = 3, value_name = "SECONDS")]
        timeout: u64,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Download, verify and extract models into the cache (every configured
    /// model when no id is given). Idempotent; resumes interrupted downloads.
    Pull {
        /// Model ids from the catalog.
        ids: Vec<String>,
    },
    /// Show the configured models and where their files are.
    List,
    /// Check a model's files on disk and add it to the catalog of the
    /// --config file (created if missing; rewritten, so its comments are
    /// not kept).
    Add {
        /// The id requests will name it by.
        id: String,
        /// A .gguf file (chat) or a Hugging Face-layout directory
        /// (embedding).
        path: PathBuf,
        #[arg(long, value_enum)]
        kind: crate::models_add::AddKind,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (secrets redacted), or every
    /// invalid key and where it was set, and exit 1.
    Check,
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let sources = ConfigSources {
        profile: cli.profile.clone(),
        file: cli.config.clone(),
        environment: std::env::vars().collect(),
    };
    if let Command::Models { command: ModelsCommand::Add { id, path, kind } } = &cli.command {
        return match crate::models_add::add(&sources, id, path, *kind) {
            Ok(entry) => {
                println!("added to the catalog:\n{entry}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("cannot add {id}: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = match Settings::load(&sources) {
        Ok(settings) => settings,
        Err(errors) => {
            eprintln!("invalid configuration:");
            for error in &errors {
                eprintln!("  - {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Config { command: ConfigCommand::Check } => {
            print!("{}", settings.to_redacted_yaml(&sources));
            ExitCode::SUCCESS
        }
        Command::Health { ready, address, timeout } => {
            let probe = if ready { Probe::Ready } else { Probe::Live };
            let address = address.unwrap_or_else(|| crate::probe::local_address(&settings.server));
            match crate::probe::check(&address, probe, Duration::from_secs(timeout.max(1))) {
                Ok(status_line) => {
                    println!("{status_line}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("unhealthy: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { offline } => crate::app::serve_blocking(settings, sources, offline),
        // Answered before the configuration is loaded, above.
        Command::Models { command: ModelsCommand::Add { .. } } => ExitCode::FAILURE,
        Command::Models { command: ModelsCommand::List } => {
            print!("{}", crate::models::list(&settings.models));
            ExitCode::SUCCESS
        }
        Command::Models { command: ModelsCommand::Pull { ids } } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let pulled = match runtime {
                Ok(runtime) => runtime.block_on(crate::models::pull(&settings.models, &ids, Progress::Bar)),
                Err(error) => Err(crate::models::ModelsError::Runtime(error)),
            };
            match pulled {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("pull failed: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
