//! What can stop a run before it measures anything: a target the drivers
//! cannot or must not load, and a machine that cannot host the run.

use crate::OpenFileLimitError;

/// Why a `--target` URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(
        "{url}: https is not supported by the drivers; measure the server over plain HTTP on its own port"
    )]
    Https { url: String },
    #[error("{url}: give the target as http://host:port")]
    NotHttp { url: String },
    /// Credentials are refused with the missing host: a key in a URL ends
    /// up in reports and shell histories.
    #[error("{url}: no host (and no credentials in the URL: use --key)")]
    NoHost { url: String },
    #[error("{url}: cannot resolve {authority}: {source}")]
    Resolve { url: String, authority: String, source: std::io::Error },
    #[error("{url}: {authority} resolves to nothing")]
    NoAddress { url: String, authority: String },
    /// A load test must not hit someone else's server by a typo.
    #[error(
        "{url} is not this machine (loopback); pass --allow-remote to load another machine, and only one you may load"
    )]
    Remote { url: String },
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    OpenFileLimit(#[from] OpenFileLimitError),
}
