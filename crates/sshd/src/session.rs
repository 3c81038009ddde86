//! `session` channels: the child (shell, command or sftp server) behind one channel, and the
//! relay of its input and output.
//!
//! The connection handler replies to requests synchronously. Once a child runs, a task relays
//! its output and then sends `exit-status` (or `exit-signal`), EOF and close, in the order
//! OpenSSH clients expect, after all output has been sent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::server::{Handle, Msg};
use russh::{ChannelId, ChannelWriteHalf, Sig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, warn};

use crate::process::{self, ChildIo, ExitReport, Launch, LoginContext, ProcessGroup, Spawned};
use crate::pty::{AsyncPty, PtyRequest, WindowSize};
use crate::server::ConnectionState;

/// Buffered input chunks per channel before the client's data waits.
const INPUT_QUEUE: usize = 64;
/// Read size for child output.
const OUTPUT_CHUNK: usize = 32 * 1024;
/// Quiet time that ends the draining of the pty after the shell exits, for when another
/// process keeps the terminal open.
const PTY_DRAIN_IDLE: Duration = Duration::from_millis(100);
/// Buffer between the channel and the built-in sftp server.
const SFTP_PIPE_BUFFER: usize = 256 * 1024;

/// Program a session channel runs, as requested by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `shell`.
    Shell,
    /// `exec` with its command.
    Exec(String),
    /// `subsystem` with its name.
    Subsystem(String),
}

/// Connection facts given to every child.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Value of `SSH_CONNECTION`.
    pub ssh_connection: String,
    /// Value of `SSH_CLIENT`.
    pub ssh_client: String,
}

/// Everything a channel needs to start its child.
pub struct StartContext<'a> {
    /// Account and base environment.
    pub login: &'a LoginContext,
    /// SSH_CONNECTION and SSH_CLIENT.
    pub connection: &'a ConnectionInfo,
    /// Path of the forwarded agent socket, if any.
    pub agent_socket: Option<PathBuf>,
    /// `force-command` of the login's certificate.
    pub force_command: Option<&'a str>,
    /// Session handle for exit-status and exit-signal.
    pub handle: Handle,
    /// Connection state, to release the channel when it closes.
    pub state: Arc<ConnectionState>,
}

/// Errors starting a session child.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A child already runs on this channel.
    #[error("a shell, command or subsystem already runs on this channel")]
    AlreadyStarted,
    /// The subsystem is not provided.
    #[error("unknown subsystem {0:?}")]
    UnknownSubsystem(String),
    /// Spawning the child failed.
    #[error("cannot start {what}: {error}")]
    Spawn {
        /// Program.
        what: String,
        /// Cause.
        error: std::io::Error,
    },
}

/// State of one `session` channel.
pub struct SessionChannel {
    id: ChannelId,
    writer: Option<ChannelWriteHalf<Msg>>,
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    input: Option<mpsc::Sender<Bytes>>,
    terminal: Option<Arc<AsyncPty>>,
    group: Option<Arc<ProcessGroup>>,
}

impl SessionChannel {
    /// Creates the state of a newly opened channel.
    pub fn new(id: ChannelId, writer: ChannelWriteHalf<Msg>) -> Self {
        Self {
            id,
            writer: Some(writer),
            pty: None,
            env: Vec::new(),
            input: None,
            terminal: None,
            group: None,
        }
    }

    /// Returns whether a child has been started.
    pub fn is_started(&self) -> bool {
        self.writer.is_none()
    }

    /// Records a `pty-req`; returns false when a child already runs.
    pub fn set_pty(&mut self, request: PtyRequest) -> bool {
        if self.is_started() || self.pty.is_some() {
            return false;
        }
        self.pty = Some(request);
        true
    }

    /// Records an `env` request; only `LANG` and `LC_*` are accepted, as with OpenSSH's default
    /// `AcceptEnv`.
    pub fn set_env(&mut self, name: &str, value: &str) -> bool {
        let accepted = name == "LANG" || name.starts_with("LC_");
        if accepted && !self.is_started() {
            self.env.retain(|(existing, _)| existing != name);
            self.env.push((name.to_owned(), value.to_owned()));
        }
        accepted
    }

    /// Applies a `window-change` request.
    pub fn resize(&mut self, size: WindowSize) -> bool {
        if let Some(terminal) = &self.terminal {
            return crate::pty::resize(terminal.master(), size).is_ok();
        }
        match self.pty.as_mut() {
            Some(request) => {
                request.size = size;
                true
            }
            None => false,
        }
    }

    /// Forwards a `signal` request to the child's process group.
    pub fn signal(&self, signal: &Sig) -> bool {
        match (&self.group, process::unix_signal(signal)) {
            (Some(group), Some(signal)) => {
                group.signal(signal);
                true
            }
            _ => false,
        }
    }

    /// Queues input for the child; waits while the queue is full.
    ///
    /// NOTE: waiting here stalls the whole connection, because russh calls the handler from
    /// its single connection loop and replenishes the client's window on receipt. A child
    /// that neither reads its input nor exits therefore blocks the other channels too.
    pub async fn send_input(&self, data: &[u8]) {
        if let Some(input) = &self.input {
            // A closed queue means the child has exited; the data has nowhere to go.
            let _ = input.send(Bytes::copy_from_slice(data)).await;
        }
    }

    /// Handles EOF from the client: the child's standard input is closed once the queued input
    /// has been written.
    pub fn close_input(&mut self) {
        self.input = None;
    }

    /// Hangs up the child if it still runs (client closed the channel or disconnected).
    pub fn hang_up(&self) {
        if let Some(group) = &self.group {
            group.hang_up();
        }
    }

    /// Starts the child for `request` and the task relaying its I/O.
    pub fn start(&mut self, request: Request, context: StartContext<'_>) -> Result<(), StartError> {
        let Some(writer) = self.writer.take() else {
            return Err(StartError::AlreadyStarted);
        };
        let mut env = self.env.clone();
        env.push((
            "SSH_CONNECTION".into(),
            context.connection.ssh_connection.clone(),
        ));
        env.push(("SSH_CLIENT".into(), context.connection.ssh_client.clone()));
        if let Some(socket) = &context.agent_socket {
            env.push(("SSH_AUTH_SOCK".into(), socket.display().to_string()));
        }

        let request = match (context.force_command, request) {
            (Some("internal-sftp"), _) => Request::Subsystem("sftp".into()),
            (Some(forced), original) => {
                let original = match original {
                    Request::Exec(command) => Some(command),
                    Request::Subsystem(name) => Some(name),
                    Request::Shell => None,
                };
                if let Some(original) = original {
                    env.push(("SSH_ORIGINAL_COMMAND".into(), original));
                }
                Request::Exec(forced.to_owned())
            }
            (None, request) => request,
        };

        let (input_sender, input_receiver) = mpsc::channel(INPUT_QUEUE);
        let finish = Finish {
            id: self.id,
            handle: context.handle,
            state: context.state,
        };
        let span = tracing::Span::current();
        match request {
            Request::Subsystem(name) if name == "sftp" => {
                let home = context.login.account.home.clone();
                tokio::spawn(run_sftp(writer, input_receiver, home, finish).instrument(span));
            }
            Request::Subsystem(name) => {
                self.writer = Some(writer);
                return Err(StartError::UnknownSubsystem(name));
            }
            Request::Shell | Request::Exec(_) => {
                let command = match request {
                    Request::Exec(command) => Some(command),
                    _ => None,
                };
                let launch = Launch {
                    command,
                    pty: self.pty.clone(),
                    env,
                };
                let what = context.login.account.shell.display().to_string();
                let spawned = match process::spawn(context.login, launch) {
                    Ok(spawned) => spawned,
                    Err(error) => {
                        self.writer = Some(writer);
                        return Err(StartError::Spawn { what, error });
                    }
                };
                self.group = Some(Arc::clone(&spawned.group));
                if let ChildIo::Pty(terminal) = spawned.io {
                    let terminal = Arc::new(terminal);
                    self.terminal = Some(Arc::clone(&terminal));
                    let Spawned { child, group, .. } = spawned;
                    let task = run_pty(writer, input_receiver, child, group, terminal, finish);
                    tokio::spawn(task.instrument(span));
                } else {
                    tokio::spawn(
                        run_pipes(writer, input_receiver, spawned, finish).instrument(span),
                    );
                }
            }
        }
        self.input = Some(input_sender);
        Ok(())
    }
}

/// Final messages of a channel.
struct Finish {
    id: ChannelId,
    handle: Handle,
    state: Arc<ConnectionState>,
}

impl Finish {
    /// Sends the exit report, EOF and close, in that order, after all output.
    async fn send(self, writer: ChannelWriteHalf<Msg>, report: ExitReport) {
        let sent = match &report {
            ExitReport::Status(code) => self.handle.exit_status_request(self.id, *code).await,
            ExitReport::Signal {
                signal,
                core_dumped,
            } => {
                self.handle
                    .exit_signal_request(
                        self.id,
                        process::ssh_signal(signal),
                        *core_dumped,
                        String::new(),
                        String::new(),
                    )
                    .await
            }
        };
        if sent.is_err() {
            debug!(channel = %self.id, "connection closed before the exit status was sent");
        }
        let _ = writer.eof().await;
        let _ = writer.close().await;
        self.state.channel_closed(self.id);
        info!(channel = %self.id, exit = ?report, "session channel finished");
    }
}

/// Copies child output to the channel until EOF; `extended` selects stderr.
async fn relay_output(
    mut source: impl AsyncRead + Unpin,
    writer: &ChannelWriteHalf<Msg>,
    extended: bool,
) {
    let mut buffer = vec![0u8; OUTPUT_CHUNK];
    loop {
        let count = match source.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(count) => count,
        };
        let chunk = Bytes::copy_from_slice(&buffer[..count]);
        let sent = if extended {
            writer.extended_data_bytes(1, chunk).await
        } else {
            writer.data_bytes(chunk).await
        };
        if sent.is_err() {
            // The channel is gone; keep reading so that the child does not block on a full pipe.
            continue;
        }
    }
}

async fn run_pipes(
    writer: ChannelWriteHalf<Msg>,
    mut input: mpsc::Receiver<Bytes>,
    spawned: Spawned,
    finish: Finish,
) {
    let Spawned {
        mut child,
        group,
        io,
    } = spawned;
    let ChildIo::Pipes {
        mut stdin,
        stdout,
        stderr,
    } = io
    else {
        return;
    };
    let input_task = tokio::spawn(async move {
        while let Some(chunk) = input.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // Dropping stdin closes the child's standard input: EOF from the client.
    });
    tokio::join!(
        relay_output(stdout, &writer, false),
        relay_output(stderr, &writer, true)
    );
    let status = process::wait(&mut child, &group).await;
    input_task.abort();
    let report = match status {
        Ok(status) => process::exit_report(status),
        Err(error) => {
            warn!(%error, "cannot wait for child");
            ExitReport::Status(255)
        }
    };
    finish.send(writer, report).await;
}

async fn run_pty(
    writer: ChannelWriteHalf<Msg>,
    mut input: mpsc::Receiver<Bytes>,
    mut child: tokio::process::Child,
    group: Arc<ProcessGroup>,
    terminal: Arc<AsyncPty>,
    finish: Finish,
) {
    let input_terminal = Arc::clone(&terminal);
    let input_task = tokio::spawn(async move {
        while let Some(chunk) = input.recv().await {
            if input_terminal.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });

    let mut buffer = vec![0u8; OUTPUT_CHUNK];
    let mut status = None;
    loop {
        tokio::select! {
            read = terminal.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(count) => {
                    let _ = writer.data_bytes(Bytes::copy_from_slice(&buffer[..count])).await;
                }
            },
            waited = process::wait(&mut child, &group), if status.is_none() => {
                status = Some(waited);
                break;
            }
        }
    }
    if status.is_some() {
        // Output the shell wrote before exiting may still be queued in the line discipline.
        // Read until the last slave descriptor closes or the terminal stays quiet.
        while let Ok(Ok(count)) =
            tokio::time::timeout(PTY_DRAIN_IDLE, terminal.read(&mut buffer)).await
        {
            if count == 0 {
                break;
            }
            let _ = writer
                .data_bytes(Bytes::copy_from_slice(&buffer[..count]))
                .await;
        }
    }
    let status = match status {
        Some(status) => status,
        None => process::wait(&mut child, &group).await,
    };
    input_task.abort();
    let report = match status {
        Ok(status) => process::exit_report(status),
        Err(error) => {
            warn!(%error, "cannot wait for child");
            ExitReport::Status(255)
        }
    };
    finish.send(writer, report).await;
}

async fn run_sftp(
    writer: ChannelWriteHalf<Msg>,
    mut input: mpsc::Receiver<Bytes>,
    home: PathBuf,
    finish: Finish,
) {
    let (server_end, channel_end) = tokio::io::duplex(SFTP_PIPE_BUFFER);
    russh_sftp::server::run(server_end, crate::sftp::SftpSession::new(home)).await;
    let (output, mut requests) = tokio::io::split(channel_end);
    let input_task = tokio::spawn(async move {
        while let Some(chunk) = input.recv().await {
            if requests.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // EOF from the client ends the sftp server's request loop.
        let _ = requests.shutdown().await;
    });
    relay_output(output, &writer, false).await;
    input_task.abort();
    finish.send(writer, ExitReport::Status(0)).await;
}
