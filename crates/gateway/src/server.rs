//! Accept loop and per-connection supervision: LoginGraceTime, the idle timeout, revocation,
//! graceful shutdown and the closing audit line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use russh::Disconnect;
use russh::server::{Handle, RunningSession, run_stream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{RwLock, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::audit::{self, Metrics};
use crate::cache::Caches;
use crate::certificate::CertificateAuthority;
use crate::connection::{Connection, Shared};
use crate::device::DeviceLogin;
use crate::limits::LimitState;
use crate::revocation::Registry;
use crate::routing::RouteSettings;
use crate::upstream::UpstreamSettings;

/// Message sent to connections still open when the shutdown grace period ends.
const SHUTDOWN_MESSAGE: &str = "the SSH gateway is restarting: connect again in a moment";
/// Time given to the closing message to reach the client before the disconnect.
const MESSAGE_FLUSH: Duration = Duration::from_millis(200);
/// Time given to connections to close after the closing message was sent.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything connections share.
pub struct GatewayContext {
    /// Watch caches.
    pub caches: Caches,
    /// The CA, once loaded.
    pub ca: RwLock<Option<Arc<CertificateAuthority>>>,
    /// Routing settings.
    pub route_settings: RouteSettings,
    /// Second-hop settings.
    pub upstream_settings: UpstreamSettings,
    /// Limits and their counters.
    pub limits: LimitState,
    /// Metrics.
    pub metrics: Metrics,
    /// Live connections, for revocation.
    pub registry: Arc<Registry>,
    /// Login without a key, when an identity provider is configured.
    pub device: Option<Arc<DeviceLogin>>,
    /// Kubernetes client, for recording device-login approvals.
    pub client: kube::Client,
}

/// Accepts connections until `shutdown` completes, then lets open connections finish for
/// `grace` before closing them with a message.
pub async fn serve(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    context: Arc<GatewayContext>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let (closing, closing_receiver) = watch::channel(false);
    let mut next_number: u64 = 1;
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let number = next_number;
                    next_number += 1;
                    let task = run_connection(
                        socket,
                        peer,
                        number,
                        Arc::clone(&config),
                        Arc::clone(&context),
                        closing_receiver.clone(),
                    );
                    connections.spawn(task);
                }
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    info!(open_connections = connections.len(), grace = ?grace, "no longer accepting connections");
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_ok() {
        return;
    }
    info!(
        open_connections = connections.len(),
        "grace period over: closing open connections"
    );
    let _ = closing.send(true);
    let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if closed.is_err() {
        warn!(
            open_connections = connections.len(),
            "aborting connections that did not close"
        );
        connections.shutdown().await;
    }
}

async fn run_connection(
    socket: TcpStream,
    peer: SocketAddr,
    number: u64,
    config: Arc<russh::server::Config>,
    context: Arc<GatewayContext>,
    closing: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let _ = socket.set_nodelay(true);
    let shared_span = info_span!("connection", id = tracing::field::Empty, peer = %peer);
    let shared = Arc::new(Shared::new(number, peer, shared_span.clone()));
    shared.span.record("id", shared.id.as_str());
    context.metrics.connections.inc();
    context.metrics.connections_current.inc();
    async {
        debug!("connection accepted");
        let handler = Connection::new(Arc::clone(&shared), Arc::clone(&context));
        let grace = context.limits.limits().login_grace_time;
        let setup = run_stream(config, socket, handler);
        let setup = match grace {
            Some(limit) => tokio::time::timeout(limit, setup).await,
            None => Ok(setup.await),
        };
        let reason = match setup {
            Err(_) => "login grace time exceeded during key exchange".to_owned(),
            Ok(Err(error)) => format!("connection setup failed: {error}"),
            Ok(Ok(session)) => supervise(session, &shared, &context, closing, started).await,
        };
        finish(&shared, &context, started, &reason).await;
    }
    .instrument(shared_span)
    .await;
    context.metrics.connections_current.dec();
}

async fn finish(shared: &Shared, context: &GatewayContext, started: Instant, reason: &str) {
    context.registry.remove(shared.number);
    let audit = shared.audit();
    let authenticated = shared.authenticated.load(Ordering::SeqCst);
    if !authenticated && shared.rejected_attempts.load(Ordering::Relaxed) > 0 {
        context
            .limits
            .record_failure(shared.peer.ip(), audit.ssh_user.as_deref());
        context.metrics.login("rejected");
    }
    if let Some(Ok(upstream)) = shared.upstream.get() {
        upstream.disconnect("the client disconnected").await;
    }
    audit::connection_closed(&audit, shared.peer, shared.bytes.totals(), started, reason);
}

/// Waits for a running session to end, closing it on LoginGraceTime, the idle timeout,
/// revocation and shutdown. Returns why it ended.
async fn supervise(
    session: RunningSession<Connection>,
    shared: &Shared,
    context: &GatewayContext,
    mut closing: watch::Receiver<bool>,
    started: Instant,
) -> String {
    let handle = session.handle();
    let mut session = std::pin::pin!(session);
    let limits = context.limits.limits();
    let grace_deadline = limits.login_grace_time.map(|limit| started + limit);
    let far_future = started + Duration::from_secs(86_400 * 365);
    let grace_timer = tokio::time::sleep_until(grace_deadline.unwrap_or(far_future).into());
    let mut grace_timer = std::pin::pin!(grace_timer);
    let check_every = limits
        .idle_timeout
        .map(|limit| (limit / 10).clamp(Duration::from_millis(100), Duration::from_secs(30)))
        .unwrap_or(Duration::from_secs(30));
    let mut ticker = tokio::time::interval(check_every);
    let mut terminate = shared.terminate.subscribe();
    let mut requested: Option<String> = None;

    loop {
        tokio::select! {
            result = &mut session => {
                return match (requested, result) {
                    (Some(reason), _) => reason,
                    (None, Ok(())) => "client disconnected".to_owned(),
                    (None, Err(error)) => format!("connection error: {error}"),
                };
            }
            () = &mut grace_timer, if requested.is_none()
                && grace_deadline.is_some()
                && !shared.authenticated.load(Ordering::SeqCst) =>
            {
                // A device login waiting for the browser may outlast LoginGraceTime, up to
                // the expiry of its code.
                match shared.login_extended_until() {
                    Some(until) if until > Instant::now() => {
                        grace_timer.as_mut().reset(until.into());
                    }
                    _ => {
                        requested = Some("login grace time exceeded".to_owned());
                        disconnect(&handle, "login grace time exceeded").await;
                    }
                }
            }
            _ = ticker.tick(), if requested.is_none() => {
                if let Some(limit) = limits.idle_timeout
                    && shared.authenticated.load(Ordering::SeqCst)
                    && shared.activity.idle_for() >= limit
                {
                    let message = format!("closing the connection after {limit:?} without traffic");
                    close_with_message(&handle, shared, &message).await;
                    requested = Some("idle timeout".to_owned());
                }
            }
            changed = terminate.changed(), if requested.is_none() => {
                if changed.is_err() {
                    continue;
                }
                let message = terminate.borrow_and_update().clone();
                if let Some(message) = message {
                    close_with_message(&handle, shared, &message).await;
                    requested = Some(format!("closed by the gateway: {message}"));
                }
            }
            changed = closing.changed(), if requested.is_none() => {
                if changed.is_ok() && *closing.borrow() {
                    close_with_message(&handle, shared, SHUTDOWN_MESSAGE).await;
                    requested = Some("gateway shutting down".to_owned());
                }
            }
        }
    }
}

/// Writes `message` to the standard error of every open session channel, then disconnects
/// with `message` as the reason, which OpenSSH clients print too.
async fn close_with_message(handle: &Handle, shared: &Shared, message: &str) {
    let channels = shared.open_session_channels();
    for channel in &channels {
        let text = format!("\r\n{message}\r\n");
        let _ = handle.extended_data(*channel, 1, text.into_bytes()).await;
    }
    if !channels.is_empty() {
        tokio::time::sleep(MESSAGE_FLUSH).await;
    }
    disconnect(handle, message).await;
}

async fn disconnect(handle: &Handle, reason: &str) {
    if handle
        .disconnect(Disconnect::ByApplication, reason.to_owned(), String::new())
        .await
        .is_err()
    {
        debug!("connection already closed");
    }
}
