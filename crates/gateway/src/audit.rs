//! Audit log lines and metrics.
//!
//! Each connection and each channel ends with one `info` event on the `audit` target that
//! carries every fact about it as structured fields, so JSON logs (`--log-format json`) give
//! one JSON object per connection and per channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label of [`Metrics::logins`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// Outcome, for example `accepted` or `key_not_accepted`.
    pub result: String,
}

/// Label of [`Metrics::bytes`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `to_session` or `to_client`.
    pub direction: &'static str,
}

/// Label of [`Metrics::channels`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    /// SSH channel type, or `proxy-jump` for a direct-tcpip channel to the sidecar itself.
    pub channel_type: &'static str,
}

/// Label of [`Metrics::revocations`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why the connection was closed.
    pub reason: String,
}

/// The gateway's metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Open connections.
    pub connections_current: Gauge,
    /// Connections accepted since start.
    pub connections: Counter,
    /// Login attempts by result (one per connection that authenticates or gives up).
    pub logins: Family<ResultLabel, Counter>,
    /// Bytes relayed by direction.
    pub bytes: Family<DirectionLabel, Counter>,
    /// Channels opened by type.
    pub channels: Family<ChannelLabel, Counter>,
    /// Connections closed because their access ended, by reason.
    pub revocations: Family<ReasonLabel, Counter>,
}

impl Metrics {
    /// Registers every metric under the `renku_ssh_gateway` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("renku_ssh_gateway");
        registry.register(
            "connections_current",
            "Open SSH connections",
            self.connections_current.clone(),
        );
        registry.register(
            "connections",
            "SSH connections accepted",
            self.connections.clone(),
        );
        registry.register("logins", "Logins by result", self.logins.clone());
        registry.register(
            "relayed_bytes",
            "Bytes relayed by direction",
            self.bytes.clone(),
        );
        registry.register("channels", "Channels opened by type", self.channels.clone());
        registry.register(
            "revocations",
            "Connections closed because their access ended, by reason",
            self.revocations.clone(),
        );
    }

    /// Counts a login outcome.
    pub fn login(&self, result: &str) {
        self.logins
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts an opened channel.
    pub fn channel(&self, channel_type: &'static str) {
        self.channels
            .get_or_create(&ChannelLabel { channel_type })
            .inc();
    }
}

/// Byte counters of one channel or connection, in both directions.
#[derive(Debug, Default)]
pub struct ByteCount {
    to_session: AtomicU64,
    to_client: AtomicU64,
}

impl ByteCount {
    /// Adds bytes sent from the client towards the session.
    pub fn add_to_session(&self, bytes: usize) {
        self.to_session.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Adds bytes sent from the session towards the client.
    pub fn add_to_client(&self, bytes: usize) {
        self.to_client.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Returns (to session, to client).
    pub fn totals(&self) -> (u64, u64) {
        (
            self.to_session.load(Ordering::Relaxed),
            self.to_client.load(Ordering::Relaxed),
        )
    }
}

/// Audit record of one channel, logged when the channel ends.
#[derive(Debug)]
pub struct ChannelAudit {
    /// Channel type.
    pub channel_type: &'static str,
    /// Exec command or subsystem name.
    pub command: Option<String>,
    /// Forwarded host, for TCP channels.
    pub host: Option<String>,
    /// Forwarded port, for TCP channels.
    pub port: Option<u32>,
    /// Bytes relayed.
    pub bytes: Arc<ByteCount>,
    /// When the channel opened.
    pub started: Instant,
}

impl ChannelAudit {
    /// Creates a record for a channel opened now.
    pub fn new(channel_type: &'static str) -> Self {
        Self {
            channel_type,
            command: None,
            host: None,
            port: None,
            bytes: Arc::default(),
            started: Instant::now(),
        }
    }

    /// Sets the forwarded host and port.
    pub fn with_target(mut self, host: &str, port: u32) -> Self {
        self.host = Some(host.to_owned());
        self.port = Some(port);
        self
    }

    /// Logs the record on the `audit` target and adds its bytes to the metrics. The
    /// connection's span adds user, session, source address and connection id.
    pub fn finish(&self, metrics: &Metrics, outcome: &str) {
        let (to_session, to_client) = self.bytes.totals();
        metrics
            .bytes
            .get_or_create(&DirectionLabel {
                direction: "to_session",
            })
            .inc_by(to_session);
        metrics
            .bytes
            .get_or_create(&DirectionLabel {
                direction: "to_client",
            })
            .inc_by(to_client);
        tracing::info!(
            target: "audit",
            event = "channel",
            channel_type = self.channel_type,
            command = self.command.as_deref(),
            host = self.host.as_deref(),
            port = self.port,
            bytes_to_session = to_session,
            bytes_to_client = to_client,
            duration_ms = self.started.elapsed().as_millis() as u64,
            outcome,
            "channel closed"
        );
    }
}

/// Facts about a connection for its closing audit line.
#[derive(Debug, Default, Clone)]
pub struct ConnectionAudit {
    /// SSH user name (the session name the client asked for).
    pub ssh_user: Option<String>,
    /// Identity-provider subject, once authorized.
    pub user: Option<String>,
    /// `namespace/session`, once authorized.
    pub session: Option<String>,
    /// Authentication method that succeeded.
    pub method: Option<&'static str>,
    /// Fingerprint of the key that logged in.
    pub fingerprint: Option<String>,
}

/// Logs the closing line of a connection on the `audit` target.
pub fn connection_closed(
    audit: &ConnectionAudit,
    source: std::net::SocketAddr,
    bytes: (u64, u64),
    started: Instant,
    reason: &str,
) {
    tracing::info!(
        target: "audit",
        event = "connection",
        ssh_user = audit.ssh_user.as_deref(),
        user = audit.user.as_deref(),
        session = audit.session.as_deref(),
        source = %source,
        method = audit.method,
        fingerprint = audit.fingerprint.as_deref(),
        bytes_to_session = bytes.0,
        bytes_to_client = bytes.1,
        duration_ms = started.elapsed().as_millis() as u64,
        reason,
        "connection closed"
    );
}
