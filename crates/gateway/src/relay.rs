//! Channel relaying between the client's connection and the second hop.
//!
//! A `session` channel is relayed message by message. Requests (pty, env, shell, exec,
//! subsystem, window changes, signals, agent forwarding) go to the sidecar in the order the
//! client sent them, and their replies come back in that order. Data, EOF, exit status, exit
//! signal and close come back in the order the sidecar sent them. TCP and agent channels are
//! spliced as byte streams.
//!
//! NOTE: russh applies backpressure by pausing a whole connection, so a client that pushes
//! bulk data both ways on one connection while the sidecar reads slowly can stall until one
//! side drains. Bulk transfers in one direction (scp, sftp, port forwards) are not affected.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Pty, Sig, client, server};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::audit::ByteCount;

/// Queued messages per channel from the client towards the sidecar before the client's
/// connection waits.
const INPUT_QUEUE: usize = 64;

/// A channel request from the client, relayed to the sidecar.
#[derive(Debug, Clone)]
pub enum Request {
    /// `pty-req`.
    Pty {
        /// TERM value.
        term: String,
        /// Columns.
        columns: u32,
        /// Rows.
        rows: u32,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Terminal modes.
        modes: Vec<(Pty, u32)>,
    },
    /// `env`.
    Env {
        /// Variable name.
        name: String,
        /// Value.
        value: String,
    },
    /// `shell`.
    Shell,
    /// `exec` with its command.
    Exec(Vec<u8>),
    /// `subsystem` with its name.
    Subsystem(String),
    /// `window-change`, sent without a reply.
    WindowChange {
        /// Columns.
        columns: u32,
        /// Rows.
        rows: u32,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// `signal`, sent without a reply.
    Signal(Sig),
    /// `auth-agent-req@openssh.com`.
    Agent,
}

/// Message from the client on a session channel, queued in order.
#[derive(Debug)]
enum Input {
    Data(Bytes),
    Eof,
    Close,
    Request(Request, Option<oneshot::Sender<bool>>),
}

type Replies = Arc<Mutex<VecDeque<oneshot::Sender<bool>>>>;

/// The client-to-sidecar half of a relayed session channel, kept by the connection handler.
#[derive(Debug, Clone)]
pub struct SessionInput {
    input: mpsc::Sender<Input>,
}

impl SessionInput {
    /// Queues data for the sidecar; waits while the queue is full.
    pub async fn data(&self, data: &[u8]) -> bool {
        self.input
            .send(Input::Data(Bytes::copy_from_slice(data)))
            .await
            .is_ok()
    }

    /// Queues EOF after the data already queued.
    pub async fn eof(&self) {
        let _ = self.input.send(Input::Eof).await;
    }

    /// Queues a close after everything already queued.
    pub async fn close(&self) {
        let _ = self.input.send(Input::Close).await;
    }

    /// Relays a request that wants a reply; returns the sidecar's reply, or `false` when the
    /// channel is gone or `timeout` passes.
    pub async fn request(&self, request: Request, timeout: std::time::Duration) -> bool {
        let (reply, answer) = oneshot::channel();
        if self
            .input
            .send(Input::Request(request, Some(reply)))
            .await
            .is_err()
        {
            return false;
        }
        matches!(tokio::time::timeout(timeout, answer).await, Ok(Ok(true)))
    }

    /// Relays a request that gets no reply (window change, signal).
    pub async fn notify(&self, request: Request) {
        let _ = self.input.send(Input::Request(request, None)).await;
    }
}

/// Starts relaying a session channel: `client` is the client's channel, `upstream` the
/// sidecar's. Returns the input half; `finished` runs when the sidecar's side ends.
pub fn start_session(
    client: ChannelWriteHalf<server::Msg>,
    client_handle: server::Handle,
    upstream: russh::Channel<client::Msg>,
    bytes: Arc<ByteCount>,
    activity: Arc<Activity>,
    finished: impl FnOnce(&'static str) + Send + 'static,
) -> SessionInput {
    let (input, queue) = mpsc::channel(INPUT_QUEUE);
    let replies: Replies = Arc::default();
    let (reader, writer) = upstream.split();
    let span = tracing::Span::current();
    tokio::spawn(tracing::Instrument::instrument(
        write_upstream(
            writer,
            queue,
            Arc::clone(&replies),
            Arc::clone(&bytes),
            Arc::clone(&activity),
        ),
        span.clone(),
    ));
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let outcome =
                read_upstream(reader, client, client_handle, replies, bytes, activity).await;
            finished(outcome);
        },
        span,
    ));
    SessionInput { input }
}

async fn write_upstream(
    writer: ChannelWriteHalf<client::Msg>,
    mut queue: mpsc::Receiver<Input>,
    replies: Replies,
    bytes: Arc<ByteCount>,
    activity: Arc<Activity>,
) {
    while let Some(item) = queue.recv().await {
        let sent = match item {
            Input::Data(data) => {
                bytes.add_to_session(data.len());
                activity.touch();
                writer.data_bytes(data).await
            }
            Input::Eof => writer.eof().await,
            Input::Close => {
                let _ = writer.close().await;
                return;
            }
            Input::Request(request, reply) => {
                let want_reply = reply.is_some();
                if let Some(reply) = reply {
                    lock(&replies).push_back(reply);
                }
                send_request(&writer, request, want_reply).await
            }
        };
        if let Err(error) = sent {
            debug!(%error, "the sidecar's channel is closed; dropping client input");
            return;
        }
    }
    // The client's side is gone without a close (the connection ended): close upstream too.
    let _ = writer.close().await;
}

async fn send_request(
    writer: &ChannelWriteHalf<client::Msg>,
    request: Request,
    want_reply: bool,
) -> Result<(), russh::Error> {
    match request {
        Request::Pty {
            term,
            columns,
            rows,
            width,
            height,
            modes,
        } => {
            writer
                .request_pty(want_reply, &term, columns, rows, width, height, &modes)
                .await
        }
        Request::Env { name, value } => writer.set_env(want_reply, name, value).await,
        Request::Shell => writer.request_shell(want_reply).await,
        Request::Exec(command) => writer.exec(want_reply, command).await,
        Request::Subsystem(name) => writer.request_subsystem(want_reply, name).await,
        Request::WindowChange {
            columns,
            rows,
            width,
            height,
        } => writer.window_change(columns, rows, width, height).await,
        Request::Signal(signal) => writer.signal(signal).await,
        Request::Agent => writer.agent_forward(want_reply).await,
    }
}

/// Relays the sidecar's messages to the client until the sidecar closes the channel; returns
/// how the channel ended.
async fn read_upstream(
    mut reader: ChannelReadHalf,
    client: ChannelWriteHalf<server::Msg>,
    client_handle: server::Handle,
    replies: Replies,
    bytes: Arc<ByteCount>,
    activity: Arc<Activity>,
) -> &'static str {
    let id = client.id();
    loop {
        let Some(message) = reader.wait().await else {
            let _ = client.close().await;
            return "second hop closed";
        };
        let delivered = match message {
            ChannelMsg::Data { data } => {
                bytes.add_to_client(data.len());
                activity.touch();
                client.data_bytes(data).await.is_ok()
            }
            ChannelMsg::ExtendedData { data, ext } => {
                bytes.add_to_client(data.len());
                activity.touch();
                client.extended_data_bytes(ext, data).await.is_ok()
            }
            ChannelMsg::Eof => client.eof().await.is_ok(),
            ChannelMsg::ExitStatus { exit_status } => client.exit_status(exit_status).await.is_ok(),
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => client_handle
                .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                .await
                .is_ok(),
            ChannelMsg::XonXoff { client_can_do } => client_handle
                .xon_xoff_request(id, client_can_do)
                .await
                .is_ok(),
            ChannelMsg::Success | ChannelMsg::Failure => {
                let success = matches!(message, ChannelMsg::Success);
                if let Some(reply) = lock(&replies).pop_front() {
                    let _ = reply.send(success);
                }
                true
            }
            ChannelMsg::Close => {
                let _ = client.close().await;
                return "closed";
            }
            other => {
                debug!(message = ?other, "ignoring message from the sidecar");
                true
            }
        };
        if !delivered {
            // The client's channel is gone; keep draining so the sidecar is not blocked.
            debug!(channel = %id, "client channel closed; draining the sidecar's output");
        }
    }
}

/// Time of the last relayed data on a connection, for the idle timeout.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_millis: std::sync::atomic::AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_millis: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Records activity now.
    pub fn touch(&self) {
        let millis = self.start.elapsed().as_millis() as u64;
        self.last_millis
            .store(millis, std::sync::atomic::Ordering::Relaxed);
    }

    /// Returns the time since the last activity.
    pub fn idle_for(&self) -> std::time::Duration {
        let last = self.last_millis.load(std::sync::atomic::Ordering::Relaxed);
        let now = self.start.elapsed().as_millis() as u64;
        std::time::Duration::from_millis(now.saturating_sub(last))
    }
}

/// A stream that counts the bytes read from it and records activity.
pub struct Counted<S> {
    inner: S,
    bytes: Arc<ByteCount>,
    towards_session: bool,
    activity: Arc<Activity>,
}

impl<S> Counted<S> {
    /// Wraps `inner`; bytes read from it count towards the session when `towards_session`.
    pub fn new(
        inner: S,
        bytes: Arc<ByteCount>,
        towards_session: bool,
        activity: Arc<Activity>,
    ) -> Self {
        Self {
            inner,
            bytes,
            towards_session,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            if self.towards_session {
                self.bytes.add_to_session(read);
            } else {
                self.bytes.add_to_client(read);
            }
            self.activity.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies bytes both ways between the client's channel and the session side until both ends
/// have sent EOF. Dropping the streams closes the channels.
pub async fn splice<C, S>(client: C, session: S, bytes: Arc<ByteCount>, activity: Arc<Activity>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = Counted::new(client, Arc::clone(&bytes), true, Arc::clone(&activity));
    let mut session = Counted::new(session, bytes, false, activity);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut session).await {
        debug!(%error, "spliced channel ended with an error");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
