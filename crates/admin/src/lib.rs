//! Process plumbing shared by the long-running binaries: logging set-up, the admin HTTP server
//! (`/livez`, `/readyz`, `/metrics`) and the shutdown signal.

mod logging;
mod server;

pub use logging::{LogFormat, init_logging};
pub use server::{AdminServer, Health, shutdown_signal};

/// Errors from setting up the process plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log format is neither `text` nor `json`.
    #[error("invalid log format {0:?}: use `text` or `json`")]
    InvalidLogFormat(String),
    /// A global tracing subscriber was already installed.
    #[error("failed to install the tracing subscriber: {0}")]
    Logging(String),
    /// The admin server could not bind its address.
    #[error("failed to bind the admin server to {address}: {source}; choose a free address")]
    Bind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}
