//! Agent forwarding: a Unix socket in a private directory; each connection to it opens an
//! `auth-agent@openssh.com` channel to the client.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::Rng;
use russh::server::Handle;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info};

use crate::server::{ChannelKind, ConnectionState};

/// A listening agent socket; dropping it stops the listener and removes the socket and its
/// directory.
pub struct AgentSocket {
    directory: PathBuf,
    path: PathBuf,
    task: JoinHandle<()>,
}

impl AgentSocket {
    /// Creates `renku-sshd-agent-<random>/agent.sock` (directory mode 0700) in the temporary
    /// directory and starts accepting connections.
    pub fn start(handle: Handle, state: Arc<ConnectionState>) -> io::Result<Self> {
        let suffix: u64 = rand::thread_rng().r#gen();
        let directory = std::env::temp_dir().join(format!("renku-sshd-agent-{suffix:016x}"));
        std::fs::DirBuilder::new().mode(0o700).create(&directory)?;
        let path = directory.join("agent.sock");
        let listener = match UnixListener::bind(&path) {
            Ok(listener) => listener,
            Err(error) => {
                let _ = std::fs::remove_dir(&directory);
                return Err(error);
            }
        };
        let task = tokio::spawn(accept_loop(listener, handle, state).in_current_span());
        info!(socket = %path.display(), "agent forwarding enabled");
        Ok(Self {
            directory,
            path,
            task,
        })
    }

    /// Path for `SSH_AUTH_SOCK`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.directory);
    }
}

async fn accept_loop(listener: UnixListener, handle: Handle, state: Arc<ConnectionState>) {
    loop {
        let mut local = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                debug!(%error, "accept on agent socket failed");
                continue;
            }
        };
        let handle = handle.clone();
        let state = Arc::clone(&state);
        let relay = async move {
            let channel = match handle.channel_open_agent().await {
                Ok(channel) => channel,
                Err(error) => {
                    info!(%error, "client rejected the agent channel");
                    return;
                }
            };
            let id = channel.id();
            state.channel_opened(id, ChannelKind::Forwarding);
            let mut remote = channel.into_stream();
            if let Err(error) = tokio::io::copy_bidirectional(&mut local, &mut remote).await {
                debug!(%error, "agent relay ended with an error");
            }
            drop(remote);
            state.channel_closed(id);
        };
        tokio::spawn(relay.in_current_span());
    }
}
