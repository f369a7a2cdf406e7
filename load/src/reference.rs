//! The bare reference server, as a child process that blaze-load starts
//! for the `baseline` scenario and stops when done.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Why the reference server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("cannot start {binary}: {source}")]
    Start { binary: PathBuf, source: std::io::Error },
    #[error("the reference server has no stdout")]
    NoStandardOutput,
    /// Its first line of output was not the JSON event with its address.
    #[error("{binary} did not say where it listens")]
    NoAddress { binary: PathBuf },
}

pub struct ReferenceServer {
    child: Child,
    pub url: String,
}

/// `blaze-reference` beside this executable.
pub fn beside_this_binary() -> Option<PathBuf> {
    let binary = std::env::current_exe().ok()?.parent()?.join("blaze-reference");
    binary.exists().then_some(binary)
}

impl ReferenceServer {
    /// Starts it on a free loopback port and waits for its address.
    pub fn start(binary: &Path) -> Result<Self, ReferenceError> {
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| ReferenceError::Start { binary: binary.to_owned(), source })?;
        let stdout = child.stdout.take().ok_or(ReferenceError::NoStandardOutput)?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let address = read
            .ok()
            .and_then(|_| serde_json::from_str::<serde_json::Value>(&line).ok())
            .and_then(|event| event["address"].as_str().map(str::to_owned));
        match address {
            Some(address) => Ok(Self { child, url: format!("http://{address}") }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(ReferenceError::NoAddress { binary: binary.to_owned() })
            }
        }
    }
}

impl Drop for ReferenceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
