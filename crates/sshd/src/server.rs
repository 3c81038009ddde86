//! Accept loop and per-connection supervision: login grace time, unused-connection timeout,
//! shutdown, and the closing log line with duration and byte counts.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use russh::server::run_stream;
use russh::{ChannelId, Disconnect};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::AuthPolicy;
use crate::cli::TcpForwarding;
use crate::connection::Connection;
use crate::process::LoginContext;
use crate::resolve::Resolver;

/// Time given to open connections to close after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Server-wide settings shared by all connections.
pub struct Settings {
    /// Authentication policy.
    pub policy: AuthPolicy,
    /// Account and environment for children.
    pub login: LoginContext,
    /// Session channels allowed per connection (MaxSessions).
    pub max_sessions: usize,
    /// Time allowed to authenticate (LoginGraceTime); `None` for no limit.
    pub login_grace_time: Option<Duration>,
    /// Idle time after which a connection without channels is closed.
    pub unused_connection_timeout: Option<Duration>,
    /// AllowTcpForwarding.
    pub tcp_forwarding: TcpForwarding,
    /// AllowAgentForwarding.
    pub agent_forwarding: bool,
    /// Resolver for forwarding targets.
    pub resolver: Arc<Resolver>,
}

/// Kind of an open channel, for the MaxSessions count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// `session` channel.
    Session,
    /// Forwarding channel (`direct-tcpip`, `forwarded-tcpip`, agent).
    Forwarding,
}

/// State of one connection shared between its handler, its tasks and its supervisor.
#[derive(Debug, Default)]
pub struct ConnectionState {
    authenticated: AtomicBool,
    channels: Mutex<ChannelTable>,
}

#[derive(Debug, Default)]
struct ChannelTable {
    open: HashMap<ChannelId, ChannelKind>,
    idle_since: Option<Instant>,
}

impl ConnectionState {
    fn new() -> Self {
        Self {
            authenticated: AtomicBool::new(false),
            channels: Mutex::new(ChannelTable {
                open: HashMap::new(),
                idle_since: Some(Instant::now()),
            }),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, ChannelTable> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a successful authentication.
    pub fn set_authenticated(&self) {
        self.authenticated.store(true, Ordering::SeqCst);
        self.table().idle_since = Some(Instant::now());
    }

    /// Returns whether the client has authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::SeqCst)
    }

    /// Registers an open channel.
    pub fn channel_opened(&self, id: ChannelId, kind: ChannelKind) {
        let mut table = self.table();
        table.open.insert(id, kind);
        table.idle_since = None;
    }

    /// Registers a session channel unless `limit` session channels are already open.
    pub fn try_open_session(&self, id: ChannelId, limit: usize) -> bool {
        let mut table = self.table();
        let sessions = table
            .open
            .values()
            .filter(|kind| **kind == ChannelKind::Session)
            .count();
        if sessions >= limit {
            return false;
        }
        table.open.insert(id, ChannelKind::Session);
        table.idle_since = None;
        true
    }

    /// Unregisters a channel; closing twice is harmless.
    pub fn channel_closed(&self, id: ChannelId) {
        let mut table = self.table();
        if table.open.remove(&id).is_some() && table.open.is_empty() {
            table.idle_since = Some(Instant::now());
        }
    }

    /// Returns whether a channel is registered as open.
    pub fn is_open(&self, id: ChannelId) -> bool {
        self.table().open.contains_key(&id)
    }

    /// Time since the last channel closed, or `None` while a channel is open.
    fn idle_for(&self) -> Option<Duration> {
        self.table().idle_since.map(|since| since.elapsed())
    }
}

/// Byte counters of a connection's TCP stream.
#[derive(Debug, Default)]
struct ByteCounters {
    received: AtomicU64,
    sent: AtomicU64,
}

/// A TCP stream that counts the bytes passing through it.
struct CountingStream {
    inner: TcpStream,
    counters: Arc<ByteCounters>,
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.counters
            .received
            .fetch_add(read as u64, Ordering::Relaxed);
        result
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &result {
            self.counters
                .sent
                .fetch_add(*written as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts connections until `shutdown` turns true, then requests open connections to close
/// and waits up to a few seconds for them.
pub async fn serve(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    settings: Arc<Settings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next_id: u64 = 1;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let id = next_id;
                    next_id += 1;
                    let span = info_span!("connection", id, peer = %peer);
                    let task = run_connection(
                        socket,
                        peer,
                        Arc::clone(&config),
                        Arc::clone(&settings),
                        shutdown.clone(),
                    );
                    connections.spawn(task.instrument(span));
                }
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    info!(
        open_connections = connections.len(),
        "no longer accepting connections"
    );
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open_connections = connections.len(),
            "closing connections that did not end in time"
        );
        connections.shutdown().await;
    }
}

async fn run_connection(
    socket: TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
    settings: Arc<Settings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let _ = socket.set_nodelay(true);
    info!(local = %local, "connection accepted");

    let counters = Arc::new(ByteCounters::default());
    let stream = CountingStream {
        inner: socket,
        counters: Arc::clone(&counters),
    };
    let state = Arc::new(ConnectionState::new());
    let handler = Connection::new(Arc::clone(&settings), Arc::clone(&state), peer, local);

    let grace = settings.login_grace_time;
    let setup = run_stream(config, stream, handler);
    let setup = match grace {
        Some(limit) => tokio::time::timeout(limit, setup).await,
        None => Ok(setup.await),
    };
    let reason = match setup {
        Err(_) => "login grace time exceeded before key exchange".to_owned(),
        Ok(Err(error)) => format!("connection setup failed: {error}"),
        Ok(Ok(session)) => supervise(session, &state, &settings, &mut shutdown, started).await,
    };
    info!(
        reason,
        duration_ms = started.elapsed().as_millis() as u64,
        bytes_received = counters.received.load(Ordering::Relaxed),
        bytes_sent = counters.sent.load(Ordering::Relaxed),
        "connection closed"
    );
}

/// Waits for a running session to end, disconnecting it when the login grace time or the
/// unused-connection timeout passes or the server shuts down. Returns why it ended.
async fn supervise(
    session: russh::server::RunningSession<Connection>,
    state: &ConnectionState,
    settings: &Settings,
    shutdown: &mut watch::Receiver<bool>,
    started: Instant,
) -> String {
    let handle = session.handle();
    tokio::pin!(session);
    let grace_deadline = settings.login_grace_time.map(|limit| started + limit);
    let grace_timer = tokio::time::sleep_until(
        grace_deadline
            .unwrap_or_else(|| started + Duration::from_secs(86_400 * 365))
            .into(),
    );
    tokio::pin!(grace_timer);
    let check_every = settings
        .unused_connection_timeout
        .map(|limit| (limit / 10).clamp(Duration::from_millis(100), Duration::from_secs(30)))
        .unwrap_or(Duration::from_secs(30));
    let mut ticker = tokio::time::interval(check_every);
    let mut requested: Option<&'static str> = None;

    loop {
        tokio::select! {
            result = &mut session => {
                return match (requested, result) {
                    (Some(reason), _) => reason.to_owned(),
                    (None, Ok(())) => "client disconnected".to_owned(),
                    (None, Err(error)) => format!("connection error: {error}"),
                };
            }
            _ = &mut grace_timer, if requested.is_none()
                && grace_deadline.is_some()
                && !state.is_authenticated() =>
            {
                requested = Some("login grace time exceeded");
                disconnect(&handle, "login grace time exceeded").await;
            }
            _ = ticker.tick(), if requested.is_none() => {
                if state.is_authenticated()
                    && let (Some(limit), Some(idle)) =
                        (settings.unused_connection_timeout, state.idle_for())
                    && idle >= limit
                {
                    requested = Some("unused connection timeout");
                    disconnect(&handle, "unused connection timeout").await;
                }
            }
            _ = shutdown.changed(), if requested.is_none() => {
                requested = Some("server shutting down");
                disconnect(&handle, "server shutting down").await;
            }
        }
    }
}

async fn disconnect(handle: &russh::server::Handle, reason: &str) {
    debug!(reason, "disconnecting");
    if handle
        .disconnect(Disconnect::ByApplication, reason.to_owned(), String::new())
        .await
        .is_err()
    {
        debug!("connection already closed");
    }
}
