//! The russh handler of one client connection: authentication against the login policy, then
//! every channel and global request relayed to the session's sidecar.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use russh::keys::{Certificate, HashAlg};
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{
    Channel, ChannelId, ChannelOpenFailure, ChannelWriteHalf, Disconnect, MethodKind, MethodSet,
    Pty, Sig,
};
use tokio::sync::{OnceCell, watch};
use tracing::{Instrument, Span, debug, info, warn};

use crate::audit::{ByteCount, ChannelAudit, ConnectionAudit};
use crate::auth::{Denial, Grant, Proof, authorize, authorize_approved_key, authorize_user};
use crate::device::{Approval, MAX_APPROVED_KEYS, PendingLogin, record_approvals};
use crate::limits::ConnectionSlot;
use crate::relay::{self, Activity, Request, SessionInput};
use crate::revocation::{Revocable, Watched};
use crate::routing::{Availability, Lookup, Target, route};
use crate::server::GatewayContext;
use crate::upstream::{ClientSide, ForwardedTcpip, Identity, Upstream};

/// Errors that end a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// SSH protocol or transport failure.
    #[error(transparent)]
    Ssh(#[from] russh::Error),
}

/// State of one connection shared by its handler, its relay tasks, its supervisor and the
/// revocation loop.
pub struct Shared {
    /// Connection number, unique in this process.
    pub number: u64,
    /// Connection id, unique across replicas; it names the connection in logs and in the
    /// second-hop certificate.
    pub id: String,
    /// Client address.
    pub peer: SocketAddr,
    /// Span of the connection.
    pub span: Span,
    /// Bytes relayed on all channels.
    pub bytes: Arc<ByteCount>,
    /// Last relayed data, for the idle timeout.
    pub activity: Arc<Activity>,
    /// Facts for the closing audit line.
    pub audit: Mutex<ConnectionAudit>,
    /// Whether the client has authenticated.
    pub authenticated: AtomicBool,
    /// Rejected authentication attempts.
    pub rejected_attempts: AtomicU32,
    /// Handle to the client's session, set once authenticated.
    pub client: OnceLock<russh::server::Handle>,
    /// Open session channels, which get the closing message on revocation.
    pub session_channels: Mutex<HashSet<ChannelId>>,
    /// Message to close the connection with; set by revocation, shutdown or the second hop.
    pub terminate: watch::Sender<Option<String>>,
    /// The second hop, once connected.
    pub upstream: OnceCell<Result<Arc<Upstream>, String>>,
    /// Forwarding the login's SSHAccess allows.
    pub forwarding: OnceLock<api::ssh_access::Forwarding>,
    /// Audit records of the open session channels.
    channel_audits: Mutex<HashMap<ChannelId, Arc<Mutex<ChannelAudit>>>>,
    /// Later end of the login grace period while a device login waits for the browser.
    login_extended_until: Mutex<Option<Instant>>,
}

impl Shared {
    /// Creates the state of a connection from `peer`.
    pub fn new(number: u64, peer: SocketAddr, span: Span) -> Self {
        let (terminate, _) = watch::channel(None);
        Self {
            number,
            id: connection_id(),
            peer,
            span,
            bytes: Arc::default(),
            activity: Arc::default(),
            audit: Mutex::default(),
            authenticated: AtomicBool::new(false),
            rejected_attempts: AtomicU32::new(0),
            client: OnceLock::new(),
            session_channels: Mutex::default(),
            terminate,
            upstream: OnceCell::new(),
            forwarding: OnceLock::new(),
            channel_audits: Mutex::default(),
            login_extended_until: Mutex::default(),
        }
    }

    /// Returns the later end of the login grace period, if a device login set one.
    pub fn login_extended_until(&self) -> Option<Instant> {
        *lock(&self.login_extended_until)
    }

    fn extend_login(&self, until: Instant) {
        *lock(&self.login_extended_until) = Some(until);
    }

    /// Records the command (exec command or subsystem) of a session channel for its audit line.
    fn set_command(&self, channel: ChannelId, command: Option<String>) {
        if let Some(audit) = lock(&self.channel_audits).get(&channel) {
            lock(audit).command = command;
        }
    }

    /// Returns a copy of the audit facts.
    pub fn audit(&self) -> ConnectionAudit {
        lock(&self.audit).clone()
    }

    /// Asks the supervisor to close the connection with `message`; the first message wins.
    pub fn close_with(&self, message: String) {
        self.terminate.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(message);
            true
        });
    }

    /// Returns the open session channels.
    pub fn open_session_channels(&self) -> Vec<ChannelId> {
        lock(&self.session_channels).iter().copied().collect()
    }
}

impl Revocable for Shared {
    fn revoke(&self, message: String) {
        self.close_with(message);
    }
}

/// Returns 12 random hex digits.
fn connection_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The client side of the second hop: channels the sidecar opens towards the client.
struct ClientBridge {
    shared: Arc<Shared>,
    context: Arc<GatewayContext>,
}

impl ClientSide for ClientBridge {
    fn forwarded_tcpip(
        &self,
        channel: Channel<russh::client::Msg>,
        target: ForwardedTcpip,
        reply: russh::client::ChannelOpenHandle,
    ) {
        let allowed = self
            .shared
            .forwarding
            .get()
            .is_some_and(|forwarding| forwarding.remote);
        let client = self.shared.client.get().cloned();
        let shared = Arc::clone(&self.shared);
        let context = Arc::clone(&self.context);
        let task = async move {
            let Some(client) = client.filter(|_| allowed) else {
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return;
            };
            let opened = client
                .channel_open_forwarded_tcpip(
                    target.connected_address.clone(),
                    target.connected_port,
                    target.originator_address.clone(),
                    target.originator_port,
                )
                .await;
            let client_channel = match opened {
                Ok(channel) => channel,
                Err(error) => {
                    info!(%error, "client refused a forwarded-tcpip channel");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return;
                }
            };
            reply.accept().await;
            context.metrics.channel("forwarded-tcpip");
            let audit = ChannelAudit::new("forwarded-tcpip")
                .with_target(&target.connected_address, target.connected_port);
            splice_channels(client_channel, channel, audit, &shared, &context).await;
        };
        tokio::spawn(task.instrument(self.shared.span.clone()));
    }

    fn agent(&self, channel: Channel<russh::client::Msg>, reply: russh::client::ChannelOpenHandle) {
        let allowed = self
            .shared
            .forwarding
            .get()
            .is_some_and(|forwarding| forwarding.agent);
        let client = self.shared.client.get().cloned();
        let shared = Arc::clone(&self.shared);
        let context = Arc::clone(&self.context);
        let task = async move {
            let Some(client) = client.filter(|_| allowed) else {
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return;
            };
            let client_channel = match client.channel_open_agent().await {
                Ok(channel) => channel,
                Err(error) => {
                    info!(%error, "client refused an agent channel");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return;
                }
            };
            reply.accept().await;
            context.metrics.channel("auth-agent@openssh.com");
            let audit = ChannelAudit::new("auth-agent@openssh.com");
            splice_channels(client_channel, channel, audit, &shared, &context).await;
        };
        tokio::spawn(task.instrument(self.shared.span.clone()));
    }

    fn upstream_closed(&self, reason: String) {
        let session = lock(&self.shared.audit).session.clone().unwrap_or_default();
        self.shared
            .close_with(format!("connection to session {session} ended: {reason}"));
    }
}

async fn splice_channels(
    client: Channel<Msg>,
    upstream: Channel<russh::client::Msg>,
    audit: ChannelAudit,
    shared: &Shared,
    context: &GatewayContext,
) {
    let bytes = Arc::clone(&audit.bytes);
    relay::splice(
        client.into_stream(),
        upstream.into_stream(),
        Arc::clone(&bytes),
        Arc::clone(&shared.activity),
    )
    .await;
    let (to_session, to_client) = bytes.totals();
    shared.bytes.add_to_session(to_session as usize);
    shared.bytes.add_to_client(to_client as usize);
    audit.finish(&context.metrics, "closed");
}

/// A session channel of the client.
enum SessionChannel {
    /// Relayed to a sidecar session channel.
    Relayed(SessionInput),
    /// Shows a message and closes, because the session cannot be reached.
    Notice {
        /// The client's channel, taken when the message is sent.
        writer: Option<ChannelWriteHalf<Msg>>,
        /// The message.
        message: String,
    },
}

/// Keyboard-interactive state of a connection.
enum Interactive {
    /// No device login started yet.
    Idle,
    /// The client has the prompt; the provider is being polled.
    Waiting(PendingLogin),
    /// The client has a closing message; its reply ends keyboard-interactive.
    Notice,
}

/// Name of the keyboard-interactive exchange, which OpenSSH prints above the prompt.
const INTERACTIVE_NAME: &str = "";
/// Time left for the closing message's round trip once a device login has an outcome.
const NOTICE_GRACE: Duration = Duration::from_secs(30);

/// Returns the authentication methods to offer.
pub fn methods(device_flow: bool) -> MethodSet {
    if device_flow {
        MethodSet::from(&[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..])
    } else {
        MethodSet::from(&[MethodKind::PublicKey][..])
    }
}

/// What the login allows, once authenticated.
struct Authorized {
    grant: Grant,
    availability: Availability,
    _slot: Option<ConnectionSlot>,
}

/// Handler state of one connection.
pub struct Connection {
    shared: Arc<Shared>,
    context: Arc<GatewayContext>,
    authorized: Option<Arc<Authorized>>,
    channels: Arc<Mutex<HashMap<ChannelId, SessionChannel>>>,
    /// Fingerprints of the keys the client offered and the policy refused, which an approved
    /// device login trusts afterwards.
    offered: Vec<String>,
    interactive: Interactive,
    /// Set once a failing login hit the failed-login limit.
    blocked: bool,
}

impl Connection {
    /// Creates the handler of a new connection.
    pub fn new(shared: Arc<Shared>, context: Arc<GatewayContext>) -> Self {
        Self {
            shared,
            context,
            authorized: None,
            channels: Arc::default(),
            offered: Vec::new(),
            interactive: Interactive::Idle,
            blocked: false,
        }
    }

    fn methods(&self) -> MethodSet {
        // Once a device login has ended without access, keyboard-interactive is no longer
        // offered, so that the client does not start another one.
        let device =
            self.context.device.is_some() && !matches!(self.interactive, Interactive::Notice);
        methods(device)
    }

    fn reject(&self) -> Auth {
        self.shared
            .rejected_attempts
            .fetch_add(1, Ordering::Relaxed);
        let methods = if self.blocked {
            MethodSet::empty()
        } else {
            self.methods()
        };
        Auth::Reject {
            proceed_with_methods: Some(methods),
            partial_success: false,
        }
    }

    /// Returns whether failing logins as `user` from this client are blocked by the
    /// failed-login limit; once they are, the connection offers no further methods.
    fn blocked(&mut self, user: &str) -> bool {
        match self.context.limits.check_login(self.shared.peer.ip(), user) {
            Ok(()) => false,
            Err(refusal) => {
                if !self.blocked {
                    info!(parent: &self.shared.span, user, ?refusal, "login rejected: failed-login limit");
                    self.context.metrics.login("rate_limited");
                }
                self.blocked = true;
                true
            }
        }
    }

    /// Shows `message` to the user through a keyboard-interactive exchange without prompts;
    /// the client's empty answer is then rejected.
    fn notice(&mut self, message: String) -> Auth {
        self.interactive = Interactive::Notice;
        self.shared.extend_login(Instant::now() + NOTICE_GRACE);
        Auth::Partial {
            name: INTERACTIVE_NAME.into(),
            instructions: format!("{message}\n").into(),
            prompts: Vec::new().into(),
        }
    }

    /// Starts a device login for the session `user` and returns the prompt.
    async fn start_device_login(&mut self, user: &str) -> Auth {
        let Some(device) = self.context.device.clone() else {
            return self.reject();
        };
        // Only the address counts here: strangers failing on purpose against the session
        // name must not stop its owner from logging in without a key.
        if let Err(refusal) = self.context.limits.check_address(self.shared.peer.ip()) {
            info!(user, ?refusal, "device login rejected: failed-login limit");
            self.context.metrics.login("rate_limited");
            return self.notice(
                "too many failed logins from your address: wait a few minutes, then connect \
                 again"
                    .to_owned(),
            );
        }
        match device.start(self.shared.peer.ip(), user).await {
            Ok(pending) => {
                self.context.metrics.login("device_started");
                // The client waits for the gateway's reply while the user approves in the browser.
                self.shared.extend_login(pending.expires_at + NOTICE_GRACE);
                let prompt = pending.prompt.clone();
                let summary = pending.summary.clone();
                self.interactive = Interactive::Waiting(pending);
                Auth::Partial {
                    name: INTERACTIVE_NAME.into(),
                    instructions: summary.into(),
                    prompts: vec![(prompt.into(), true)].into(),
                }
            }
            Err(error) => {
                self.context.metrics.login("device_unavailable");
                self.notice(error.to_string())
            }
        }
    }

    /// Decides a device login whose token passed verification.
    async fn finish_device_login(&mut self, user: &str, token: oidc::VerifiedToken) -> Auth {
        let fingerprint = self.offered.first().cloned().unwrap_or_default();
        let name = token
            .preferred_username
            .clone()
            .unwrap_or_else(|| token.subject.clone());
        let grant = match authorize_user(
            &self.context.caches,
            user,
            &token.subject,
            &fingerprint,
            Timestamp::now(),
        ) {
            Ok(grant) => grant,
            Err(denial) => {
                info!(
                    session = user,
                    subject = token.subject,
                    reason = denial.as_str(),
                    "device login refused"
                );
                self.context.metrics.login("device_refused");
                let message = match denial {
                    Denial::DeviceFlowDisabled => format!(
                        "login without a key is turned off for session {user}: log in with a \
                         registered key"
                    ),
                    _ => format!(
                        "the account {name} that approved this login may not log in to session \
                         {user}: approve with the account that owns the session"
                    ),
                };
                return self.notice(message);
            }
        };
        self.record_approvals(&grant, &token).await;
        info!(
            session = user,
            subject = token.subject,
            "device login approved"
        );
        self.authorize_login(
            grant,
            Proof::Owner {
                user: token.subject,
            },
            "keyboard-interactive",
        );
        Auth::Accept
    }

    /// Records that the keys this client offered may log in again without a new approval.
    async fn record_approvals(&self, grant: &Grant, token: &oidc::VerifiedToken) {
        let Some(device) = &self.context.device else {
            return;
        };
        let pod = self
            .context
            .caches
            .pod(&grant.namespace, &crate::routing::pod_name(&grant.session));
        let Some(pod_uid) = pod.and_then(|pod| pod.metadata.uid.clone()) else {
            debug!("session has no pod; no key approved");
            return;
        };
        let Some(session_generation) = self
            .context
            .caches
            .session(&grant.namespace, &grant.session)
            .and_then(|session| session.metadata.generation)
        else {
            debug!("session has no generation; no key approved");
            return;
        };
        let expires_at = device.approval_end(token.expires_at);
        let mut approvals: Vec<Approval> = self
            .offered
            .iter()
            .map(|fingerprint| Approval {
                namespace: grant.namespace.clone(),
                session: grant.session.clone(),
                fingerprint: fingerprint.clone(),
                user: token.subject.clone(),
                pod_uid: pod_uid.clone(),
                session_generation,
                expires_at,
                signature: String::new(),
            })
            .collect();
        if approvals.is_empty() {
            return;
        }
        let recorded = record_approvals(
            &self.context.client,
            device.signing_key(),
            &grant.access_object,
            &mut approvals,
        )
        .await;
        match recorded {
            Ok(()) => info!(keys = approvals.len(), %expires_at, "approved the offered keys"),
            Err(error) => {
                warn!(%error, "cannot record the approved keys; the next login asks again")
            }
        }
    }

    /// Checks rate limits and the login policy for `user` with the key `fingerprint`: a key
    /// the SSHAccess lists, or one that a device login approved.
    fn check(&mut self, user: &str, fingerprint: &str) -> Option<(Grant, Proof)> {
        lock(&self.shared.audit).ssh_user = Some(user.to_owned());
        let now = Timestamp::now();
        let approved = || {
            authorize_approved_key(&self.context.caches, user, fingerprint, now).map(|grant| {
                let proof = Proof::Owner {
                    user: grant.user.clone(),
                };
                (grant, proof)
            })
        };
        let result = authorize(&self.context.caches, user, fingerprint, now)
            .map(|grant| (grant, Proof::Key))
            .or_else(|denial| {
                if self.context.device.is_some() {
                    approved().map_err(|_| denial)
                } else {
                    Err(denial)
                }
            });
        match result {
            Ok(granted) => Some(granted),
            Err(_) if self.blocked(user) => None,
            Err(denial) => {
                debug!(
                    user,
                    fingerprint,
                    reason = denial.as_str(),
                    "public key rejected"
                );
                lock(&self.shared.audit).method = Some("publickey");
                None
            }
        }
    }

    fn authorize_login(&mut self, grant: Grant, proof: Proof, method: &'static str) {
        let slot = self.context.limits.acquire_connection(&grant.user);
        let availability = match slot {
            Some(_) => route(&self.context.caches, &grant, &self.context.route_settings),
            None => Availability::Unavailable(format!(
                "you already have {} open connections through this gateway: close one, then \
                 connect again",
                self.context.limits.limits().max_connections_per_user
            )),
        };
        {
            let mut audit = lock(&self.shared.audit);
            audit.user = Some(grant.user.clone());
            audit.session = Some(format!("{}/{}", grant.namespace, grant.session));
            audit.method = Some(method);
            audit.fingerprint = (!grant.fingerprint.is_empty()).then(|| grant.fingerprint.clone());
        }
        let routed = matches!(availability, Availability::Ready(_));
        let _ = self.shared.forwarding.set(grant.forwarding.clone());
        self.context.registry.insert(
            self.shared.number,
            Watched {
                namespace: grant.namespace.clone(),
                session: grant.session.clone(),
                fingerprint: grant.fingerprint.clone(),
                proof,
                routed,
                target: Arc::clone(&self.shared) as Arc<dyn Revocable>,
            },
        );
        let result = match &availability {
            Availability::Ready(_) => "accepted",
            Availability::Unavailable(_) => "accepted_unavailable",
        };
        self.context.metrics.login(result);
        info!(
            user = grant.user,
            session = %format!("{}/{}", grant.namespace, grant.session),
            fingerprint = grant.fingerprint,
            method,
            routed,
            "authenticated"
        );
        self.authorized = Some(Arc::new(Authorized {
            grant,
            availability,
            _slot: slot,
        }));
    }

    /// Returns the connected second hop, connecting on first use.
    async fn upstream(
        shared: &Arc<Shared>,
        context: &Arc<GatewayContext>,
        authorized: &Authorized,
        target: &Target,
    ) -> Result<Arc<Upstream>, String> {
        let connect = async {
            let grant = &authorized.grant;
            let identity = Identity {
                session: &grant.session,
                namespace: &grant.namespace,
                user: &grant.user,
                connection_id: &shared.id,
                fingerprint: &grant.fingerprint,
                forwarding: &grant.forwarding,
            };
            let bridge = Arc::new(ClientBridge {
                shared: Arc::clone(shared),
                context: Arc::clone(context),
            });
            let ca = context.ca.read().await.clone();
            let Some(ca) = ca else {
                return Err("the gateway has not loaded its certificate authority yet: connect again in a minute".to_owned());
            };
            Upstream::connect(target, &identity, &ca, &context.upstream_settings, bridge)
                .await
                .map(Arc::new)
                .map_err(|error| {
                    warn!(%error, "second hop failed");
                    error.to_string()
                })
        };
        shared.upstream.get_or_init(|| connect).await.clone()
    }

    fn ready_target(&self) -> Option<(Arc<Authorized>, Target)> {
        let authorized = self.authorized.clone()?;
        match &authorized.availability {
            Availability::Ready(target) => {
                let target = target.clone();
                Some((authorized, target))
            }
            Availability::Unavailable(_) => None,
        }
    }

    fn session_input(&self, channel: ChannelId) -> Option<SessionInput> {
        match lock(&self.channels).get(&channel) {
            Some(SessionChannel::Relayed(input)) => Some(input.clone()),
            _ => None,
        }
    }

    /// Answers a request on a notice channel: shell, exec and subsystem show the message and
    /// close the channel; anything else succeeds so that the client gets that far.
    fn answer_notice(
        &self,
        channel: ChannelId,
        starts: bool,
        session: &mut Session,
    ) -> Result<bool, ConnectionError> {
        let mut channels = lock(&self.channels);
        let Some(SessionChannel::Notice { writer, message }) = channels.get_mut(&channel) else {
            return Ok(false);
        };
        if starts && let Some(writer) = writer.take() {
            session.channel_success(channel)?;
            let text = format!("{message}\r\n");
            let task = async move {
                let _ = writer.extended_data_bytes(1, text.into_bytes()).await;
                let _ = writer.exit_status(1).await;
                let _ = writer.eof().await;
                let _ = writer.close().await;
            };
            tokio::spawn(task.instrument(self.shared.span.clone()));
            return Ok(true);
        }
        session.channel_success(channel)?;
        Ok(true)
    }

    async fn relay_request(
        &mut self,
        channel: ChannelId,
        request: Request,
        starts: bool,
        session: &mut Session,
    ) -> Result<(), ConnectionError> {
        if let Some(input) = self.session_input(channel) {
            let accepted = input
                .request(request, self.context.upstream_settings.timeout)
                .await;
            return reply(session, channel, accepted);
        }
        if self.answer_notice(channel, starts, session)? {
            return Ok(());
        }
        reply(session, channel, false)
    }

    fn open_session_channel(&mut self, channel: Channel<Msg>, reply: ChannelOpenHandle) {
        let id = channel.id();
        let Some(authorized) = self.authorized.clone() else {
            tokio::spawn(reply.reject(ChannelOpenFailure::AdministrativelyProhibited));
            return;
        };
        self.context.metrics.channel("session");
        let shared = Arc::clone(&self.shared);
        let context = Arc::clone(&self.context);
        let channels = Arc::clone(&self.channels);
        let task = async move {
            let (_reader, writer) = channel.split();
            let notice = |message: String| SessionChannel::Notice {
                writer: None,
                message,
            };
            let entry = match &authorized.availability {
                Availability::Unavailable(message) => notice(message.clone()),
                Availability::Ready(target) => {
                    match Self::upstream(&shared, &context, &authorized, target).await {
                        Err(message) => notice(message),
                        Ok(upstream) => match upstream.open_session().await {
                            Err(error) => notice(format!(
                                "the SSH server of session {} refused a session channel: {error}",
                                authorized.grant.session
                            )),
                            Ok(upstream_channel) => {
                                start_session_relay(
                                    &shared,
                                    &context,
                                    id,
                                    writer,
                                    upstream_channel,
                                    &channels,
                                );
                                lock(&shared.session_channels).insert(id);
                                reply.accept().await;
                                return;
                            }
                        },
                    }
                }
            };
            let entry = match entry {
                SessionChannel::Notice { message, .. } => SessionChannel::Notice {
                    writer: Some(writer),
                    message,
                },
                relayed => relayed,
            };
            lock(&channels).insert(id, entry);
            lock(&shared.session_channels).insert(id);
            reply.accept().await;
        };
        tokio::spawn(task.instrument(self.shared.span.clone()));
    }

    fn open_proxy_jump(
        &self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) {
        let Some((_, target)) = self.ready_target() else {
            let message = match self
                .authorized
                .as_deref()
                .map(|authorized| &authorized.availability)
            {
                Some(Availability::Unavailable(message)) => message.clone(),
                _ => "not authorized".to_owned(),
            };
            info!(message, "proxy jump rejected: session unavailable");
            tokio::spawn(reply.reject(ChannelOpenFailure::ConnectFailed));
            session
                .disconnect(Disconnect::ByApplication, &message, "")
                .ok();
            return;
        };
        self.context.metrics.channel("proxy-jump");
        let shared = Arc::clone(&self.shared);
        let context = Arc::clone(&self.context);
        let task = async move {
            let connect = tokio::time::timeout(
                context.upstream_settings.timeout,
                crate::upstream::connect_tcp(&target.address),
            );
            let stream = match connect.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    warn!(address = %target.address, %error, "proxy jump: sidecar unreachable");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return;
                }
                Err(_) => {
                    warn!(address = %target.address, "proxy jump: connecting to the sidecar timed out");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            reply.accept().await;
            let audit = ChannelAudit::new("proxy-jump").with_target(&target.address.to_string(), 0);
            let bytes = Arc::clone(&audit.bytes);
            relay::splice(
                channel.into_stream(),
                stream,
                Arc::clone(&bytes),
                Arc::clone(&shared.activity),
            )
            .await;
            let (to_session, to_client) = bytes.totals();
            shared.bytes.add_to_session(to_session as usize);
            shared.bytes.add_to_client(to_client as usize);
            audit.finish(&context.metrics, "closed");
        };
        tokio::spawn(task.instrument(self.shared.span.clone()));
    }

    fn open_local_forward(
        &self,
        channel: Channel<Msg>,
        host: String,
        port: u32,
        originator: (String, u32),
        reply: ChannelOpenHandle,
    ) {
        let allowed = self
            .shared
            .forwarding
            .get()
            .is_some_and(|forwarding| forwarding.local);
        let Some((authorized, target)) = self.ready_target().filter(|_| allowed) else {
            info!(host, port, allowed, "direct-tcpip rejected");
            tokio::spawn(reply.reject(ChannelOpenFailure::AdministrativelyProhibited));
            return;
        };
        self.context.metrics.channel("direct-tcpip");
        let shared = Arc::clone(&self.shared);
        let context = Arc::clone(&self.context);
        let task = async move {
            let upstream = match Self::upstream(&shared, &context, &authorized, &target).await {
                Ok(upstream) => upstream,
                Err(message) => {
                    info!(message, "direct-tcpip rejected: second hop unavailable");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return;
                }
            };
            let opened = upstream
                .open_direct_tcpip(&host, port, &originator.0, originator.1)
                .await;
            let upstream_channel = match opened {
                Ok(channel) => channel,
                Err(error) => {
                    info!(host, port, %error, "direct-tcpip: the sidecar could not connect");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return;
                }
            };
            reply.accept().await;
            let audit = ChannelAudit::new("direct-tcpip").with_target(&host, port);
            splice_channels(channel, upstream_channel, audit, &shared, &context).await;
        };
        tokio::spawn(task.instrument(self.shared.span.clone()));
    }
}

fn start_session_relay(
    shared: &Arc<Shared>,
    context: &Arc<GatewayContext>,
    id: ChannelId,
    writer: ChannelWriteHalf<Msg>,
    upstream_channel: Channel<russh::client::Msg>,
    channels: &Arc<Mutex<HashMap<ChannelId, SessionChannel>>>,
) {
    let Some(client) = shared.client.get().cloned() else {
        return;
    };
    let audit = ChannelAudit::new("session");
    let bytes = Arc::clone(&audit.bytes);
    let audit = Arc::new(Mutex::new(audit));
    lock(&shared.channel_audits).insert(id, Arc::clone(&audit));
    let finished = {
        let shared = Arc::clone(shared);
        let context = Arc::clone(context);
        let channels = Arc::clone(channels);
        move |outcome: &'static str| {
            lock(&channels).remove(&id);
            lock(&shared.session_channels).remove(&id);
            lock(&shared.channel_audits).remove(&id);
            let audit = lock(&audit);
            let (to_session, to_client) = audit.bytes.totals();
            shared.bytes.add_to_session(to_session as usize);
            shared.bytes.add_to_client(to_client as usize);
            audit.finish(&context.metrics, outcome);
        }
    };
    let input = relay::start_session(
        writer,
        client,
        upstream_channel,
        bytes,
        Arc::clone(&shared.activity),
        finished,
    );
    lock(channels).insert(id, SessionChannel::Relayed(input));
}

fn reply(session: &mut Session, channel: ChannelId, success: bool) -> Result<(), ConnectionError> {
    if success {
        session.channel_success(channel)?;
    } else {
        session.channel_failure(channel)?;
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Handler for Connection {
    type Error = ConnectionError;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        lock(&self.shared.audit).ssh_user = Some(user.to_owned());
        Ok(Auth::Reject {
            proceed_with_methods: Some(self.methods()),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let span = self.shared.span.clone();
        let _entered = span.enter();
        let fingerprint = offer.public_key.fingerprint(HashAlg::Sha256).to_string();
        match self.check(user, &fingerprint) {
            Some(_) => Ok(Auth::Accept),
            None => {
                if self.offered.len() < MAX_APPROVED_KEYS && !self.offered.contains(&fingerprint) {
                    self.offered.push(fingerprint);
                }
                Ok(self.reject())
            }
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let span = self.shared.span.clone();
        let _entered = span.enter();
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        match self.check(user, &fingerprint) {
            Some((grant, proof)) => {
                let method = match proof {
                    Proof::Key => "publickey",
                    Proof::Owner { .. } => "publickey-approved",
                };
                self.authorize_login(grant, proof, method);
                Ok(Auth::Accept)
            }
            None => Ok(self.reject()),
        }
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        debug!(parent: &self.shared.span, user, key_id = certificate.key_id(), "certificate login rejected: the gateway accepts plain keys only");
        Ok(self.reject())
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let span = self.shared.span.clone();
        {
            let mut audit = lock(&self.shared.audit);
            audit.ssh_user = Some(user.to_owned());
            audit.method = Some("keyboard-interactive");
        }
        if self.context.device.is_none() {
            return Ok(self.reject());
        }
        let auth = match std::mem::replace(&mut self.interactive, Interactive::Idle) {
            Interactive::Idle if response.is_none() => {
                self.start_device_login(user).instrument(span).await
            }
            Interactive::Waiting(mut pending) => {
                // The answer to the prompt carries nothing; the provider's decision does.
                let outcome = pending.outcome().instrument(span.clone()).await;
                self.shared.extend_login(Instant::now() + NOTICE_GRACE);
                match outcome {
                    Ok(token) => self.finish_device_login(user, token).instrument(span).await,
                    Err(message) => {
                        info!(parent: &span, session = user, message, "device login ended without access");
                        self.context.metrics.login("device_failed");
                        self.notice(message)
                    }
                }
            }
            Interactive::Notice => {
                self.interactive = Interactive::Notice;
                self.reject()
            }
            Interactive::Idle => self.reject(),
        };
        Ok(auth)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let _ = self.shared.client.set(session.handle());
        self.shared.authenticated.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.open_session_channel(channel, reply);
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let span = self.shared.span.clone();
        let _entered = span.enter();
        let Some(authorized) = self.authorized.clone() else {
            tokio::spawn(reply.reject(ChannelOpenFailure::AdministrativelyProhibited));
            return Ok(());
        };
        // `ssh -J <session>@gateway <session>` asks for the session's own name on port 22:
        // that is a raw connection to the sidecar, where the user logs in end to end.
        if host_to_connect == authorized.grant.session && port_to_connect == 22 {
            self.open_proxy_jump(channel, reply, session);
            return Ok(());
        }
        let originator = (originator_address.to_owned(), originator_port);
        self.open_local_forward(
            channel,
            host_to_connect.to_owned(),
            port_to_connect,
            originator,
            reply,
        );
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let removed = lock(&self.channels).remove(&channel);
        lock(&self.shared.session_channels).remove(&channel);
        if let Some(SessionChannel::Relayed(input)) = removed {
            input.close().await;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(input) = self.session_input(channel) {
            input.eof().await;
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(input) = self.session_input(channel) {
            input.data(data).await;
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let request = Request::Pty {
            term: term.to_owned(),
            columns: col_width,
            rows: row_height,
            width: pix_width,
            height: pix_height,
            modes: modes.to_vec(),
        };
        self.relay_request(channel, request, false, session).await
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let request = Request::Env {
            name: variable_name.to_owned(),
            value: variable_value.to_owned(),
        };
        self.relay_request(channel, request, false, session).await
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.shared.set_command(channel, None);
        self.relay_request(channel, Request::Shell, true, session)
            .await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        info!(parent: &self.shared.span, channel = %channel, command, "exec requested");
        self.shared.set_command(channel, Some(command));
        self.relay_request(channel, Request::Exec(data.to_vec()), true, session)
            .await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        info!(parent: &self.shared.span, channel = %channel, subsystem = name, "subsystem requested");
        self.shared
            .set_command(channel, Some(format!("subsystem:{name}")));
        self.relay_request(channel, Request::Subsystem(name.to_owned()), true, session)
            .await
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(input) = self.session_input(channel) {
            let request = Request::WindowChange {
                columns: col_width,
                rows: row_height,
                width: pix_width,
                height: pix_height,
            };
            input.notify(request).await;
        }
        reply(session, channel, true)
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(input) = self.session_input(channel) {
            input.notify(Request::Signal(signal)).await;
        }
        Ok(())
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let allowed = self
            .shared
            .forwarding
            .get()
            .is_some_and(|forwarding| forwarding.agent);
        if !allowed {
            info!(parent: &self.shared.span, channel = %channel, "agent forwarding rejected: not allowed by the SSHAccess");
            return Ok(false);
        }
        match self.session_input(channel) {
            Some(input) => Ok(input
                .request(Request::Agent, self.context.upstream_settings.timeout)
                .await),
            None => Ok(false),
        }
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply(session, channel, false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let span = self.shared.span.clone();
        let allowed = self
            .shared
            .forwarding
            .get()
            .is_some_and(|forwarding| forwarding.remote);
        let Some((authorized, target)) = self.ready_target().filter(|_| allowed) else {
            info!(parent: &span, address, port = *port, allowed, "tcpip-forward rejected");
            return Ok(false);
        };
        let upstream = match Self::upstream(&self.shared, &self.context, &authorized, &target).await
        {
            Ok(upstream) => upstream,
            Err(message) => {
                info!(parent: &span, message, "tcpip-forward rejected: second hop unavailable");
                return Ok(false);
            }
        };
        match upstream.tcpip_forward(address, *port).await {
            Ok(bound) => {
                if *port == 0 {
                    *port = bound;
                }
                self.context.metrics.channel("tcpip-forward");
                info!(parent: &span, address, port = *port, "tcpip-forward listening in the session");
                Ok(true)
            }
            Err(error) => {
                info!(parent: &span, address, port = *port, %error, "tcpip-forward rejected by the sidecar");
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(Ok(upstream)) = self.shared.upstream.get().cloned() else {
            return Ok(false);
        };
        Ok(upstream.cancel_tcpip_forward(address, port).await.is_ok())
    }
}
