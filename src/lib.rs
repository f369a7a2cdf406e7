//! Blaze's binary: the CLI, the OpenAI pipeline (`openai`), the HTTP and
//! WebSocket transports over it (`http`) and the wiring of the actors. The
//! concerns themselves live in the `blaze-actors` crate.

pub mod app;
pub mod cli;
pub mod error;
pub mod gateway;
pub mod governance;
pub mod http;
pub mod identity;
pub mod logging;
pub mod models;
pub mod models_add;
pub mod openai;
pub mod probe;
pub mod routes;
pub mod settings;
pub mod telemetry;

/// The build this binary came from.
pub fn build_info() -> blaze_actors::BuildInfo {
    blaze_actors::BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        git_sha: env!("BLAZE_GIT_SHA"),
        rustc: env!("BLAZE_RUSTC_VERSION"),
        profile: env!("BLAZE_BUILD_PROFILE"),
    }
}
