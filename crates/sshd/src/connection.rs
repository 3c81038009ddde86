//! The russh handler of one connection: authentication, channel requests and global requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use russh::keys::{Certificate, HashAlg};
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, Pty, Sig};
use tokio::task::JoinHandle;
use tracing::{Instrument, Span, debug, info, warn};

use crate::agent::AgentSocket;
use crate::auth::Permissions;
use crate::forward;
use crate::pty::{PtyRequest, WindowSize};
use crate::server::{ConnectionState, Settings};
use crate::session::{ConnectionInfo, Request, SessionChannel, StartContext};

/// Errors that end a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// SSH protocol or transport failure.
    #[error(transparent)]
    Ssh(#[from] russh::Error),
}

/// Handler state of one connection.
pub struct Connection {
    span: Span,
    settings: Arc<Settings>,
    state: Arc<ConnectionState>,
    peer: SocketAddr,
    info: ConnectionInfo,
    permissions: Permissions,
    sessions: HashMap<ChannelId, SessionChannel>,
    remote_forwards: HashMap<(String, u32), Vec<JoinHandle<()>>>,
    agent: Option<AgentSocket>,
}

impl Connection {
    /// Creates the handler for a connection from `peer` to `local`.
    pub fn new(
        settings: Arc<Settings>,
        state: Arc<ConnectionState>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Self {
        let info = ConnectionInfo {
            ssh_connection: format!(
                "{} {} {} {}",
                peer.ip(),
                peer.port(),
                local.ip(),
                local.port()
            ),
            ssh_client: format!("{} {} {}", peer.ip(), peer.port(), local.port()),
        };
        Self {
            span: Span::current(),
            settings,
            state,
            peer,
            info,
            permissions: Permissions::unrestricted(),
            sessions: HashMap::new(),
            remote_forwards: HashMap::new(),
            agent: None,
        }
    }

    fn local_forwarding_allowed(&self) -> bool {
        self.settings.tcp_forwarding.allows_local() && self.permissions.port_forwarding
    }

    fn remote_forwarding_allowed(&self) -> bool {
        self.settings.tcp_forwarding.allows_remote() && self.permissions.port_forwarding
    }

    fn reply(
        session: &mut Session,
        channel: ChannelId,
        success: bool,
    ) -> Result<(), ConnectionError> {
        if success {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    fn start(&mut self, channel: ChannelId, request: Request, session: &mut Session) -> bool {
        let context = StartContext {
            login: &self.settings.login,
            connection: &self.info,
            agent_socket: self.agent.as_ref().map(|agent| agent.path().to_path_buf()),
            force_command: self.permissions.force_command.as_deref(),
            handle: session.handle(),
            state: Arc::clone(&self.state),
        };
        let Some(state) = self.sessions.get_mut(&channel) else {
            return false;
        };
        match &request {
            Request::Shell => info!(channel = %channel, "shell requested"),
            Request::Exec(command) => info!(channel = %channel, command, "exec requested"),
            Request::Subsystem(name) => {
                info!(channel = %channel, subsystem = name, "subsystem requested")
            }
        }
        match state.start(request, context) {
            Ok(()) => true,
            Err(error) => {
                warn!(channel = %channel, %error, "session request failed");
                false
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for session in self.sessions.values() {
            session.hang_up();
        }
        for tasks in self.remote_forwards.values() {
            for task in tasks {
                task.abort();
            }
        }
    }
}

impl Handler for Connection {
    type Error = ConnectionError;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        let span = self.span.clone();
        async {
            debug!(user, "none authentication rejected");
            Ok(Auth::reject())
        }
        .instrument(span)
        .await
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let span = self.span.clone();
        async {
            // For a certificate, russh passes its embedded key here. So when certificates are
            // accepted, an unlisted key must still reach signature verification. The final
            // check runs after the signature, in auth_publickey or auth_openssh_certificate.
            let acceptable = self.settings.policy.accepts_certificates()
                || self.settings.policy.is_authorized_key(offer.public_key);
            if !acceptable {
                debug!(
                    user,
                    fingerprint = %offer.public_key.fingerprint(HashAlg::Sha256),
                    "offered key is not authorized"
                );
                return Ok(Auth::reject());
            }
            Ok(Auth::Accept)
        }
        .instrument(span)
        .await
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let span = self.span.clone();
        async {
            let fingerprint = key.public_key.fingerprint(HashAlg::Sha256);
            if self.settings.policy.is_authorized_key(key.public_key) {
                info!(user, method = "publickey", %fingerprint, "authenticated");
                self.permissions = Permissions::unrestricted();
                return Ok(Auth::Accept);
            }
            info!(user, method = "publickey", %fingerprint, "authentication rejected: key not authorized");
            Ok(Auth::reject())
        }
        .instrument(span)
        .await
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let span = self.span.clone();
        async {
            let key_id = certificate.key_id();
            let serial = certificate.serial();
            match self
                .settings
                .policy
                .check_certificate(certificate, self.peer.ip())
            {
                Ok(permissions) => {
                    info!(
                        user,
                        method = "publickey-cert",
                        key_id,
                        serial,
                        ?permissions,
                        "authenticated"
                    );
                    self.permissions = permissions;
                    Ok(Auth::Accept)
                }
                Err(reason) => {
                    info!(
                        user,
                        method = "publickey-cert",
                        key_id,
                        serial,
                        %reason,
                        "authentication rejected"
                    );
                    Ok(Auth::reject())
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        let span = self.span.clone();
        async {
            self.state.set_authenticated();
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let span = self.span.clone();
        async {
            let id = channel.id();
            // Channels this server closed first never reach `channel_close`, so their state is
            // dropped here, before it (and its pty descriptor) piles up on a long connection.
            let state = Arc::clone(&self.state);
            self.sessions.retain(|channel, _| state.is_open(*channel));
            if !self.state.try_open_session(id, self.settings.max_sessions) {
                info!(channel = %id, limit = self.settings.max_sessions, "session channel rejected: MaxSessions reached");
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Ok(());
            }
            // Input arrives through `data`; the read half is not needed.
            let (_read_half, write_half) = channel.split();
            self.sessions
                .insert(id, SessionChannel::new(id, write_half));
            info!(channel = %id, kind = "session", "channel opened");
            reply.accept().await;
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let span = self.span.clone();
        async {
            let id = channel.id();
            let Ok(port) = u16::try_from(port_to_connect) else {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            };
            if !self.local_forwarding_allowed() {
                info!(channel = %id, host = host_to_connect, port, "direct-tcpip rejected: forwarding disabled");
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Ok(());
            }
            info!(
                channel = %id,
                kind = "direct-tcpip",
                host = host_to_connect,
                port,
                originator = %format!("{originator_address}:{originator_port}"),
                "channel opened"
            );
            let resolver = Arc::clone(&self.settings.resolver);
            let task = forward::direct_tcpip(
                channel,
                reply,
                host_to_connect.to_owned(),
                port,
                resolver,
                Arc::clone(&self.state),
            );
            tokio::spawn(tracing::Instrument::in_current_span(task));
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let span = self.span.clone();
        async {
            if let Some(state) = self.sessions.remove(&channel) {
                state.hang_up();
            }
            self.state.channel_closed(channel);
            debug!(channel = %channel, "channel closed by client");
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let span = self.span.clone();
        async {
            if let Some(state) = self.sessions.get_mut(&channel) {
                state.close_input();
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let span = self.span.clone();
        async {
            if let Some(state) = self.sessions.get(&channel) {
                state.send_input(data).await;
            }
            Ok(())
        }
        .instrument(span)
        .await
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
        let span = self.span.clone();
        async {
            let allowed = self.permissions.pty;
            let accepted = allowed
                && self.sessions.get_mut(&channel).is_some_and(|state| {
                    state.set_pty(PtyRequest {
                        term: term.to_owned(),
                        size: WindowSize {
                            columns: col_width,
                            rows: row_height,
                            width: pix_width,
                            height: pix_height,
                        },
                        modes: modes.to_vec(),
                    })
                });
            debug!(channel = %channel, term, accepted, "pty requested");
            Self::reply(session, channel, accepted)
        }
        .instrument(span)
        .await
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let span = self.span.clone();
        async {
            let accepted = self
                .sessions
                .get_mut(&channel)
                .is_some_and(|state| state.set_env(variable_name, variable_value));
            debug!(channel = %channel, name = variable_name, accepted, "environment variable requested");
            Self::reply(session, channel, accepted)
        }
        .instrument(span)
        .await
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let span = self.span.clone();
        async {
            let started = self.start(channel, Request::Shell, session);
            Self::reply(session, channel, started)
        }
        .instrument(span)
        .await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let span = self.span.clone();
        async {
            let command = String::from_utf8_lossy(data).into_owned();
            let started = self.start(channel, Request::Exec(command), session);
            Self::reply(session, channel, started)
        }
        .instrument(span)
        .await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let span = self.span.clone();
        async {
            let started = self.start(channel, Request::Subsystem(name.to_owned()), session);
            Self::reply(session, channel, started)
        }
        .instrument(span)
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
        let span = self.span.clone();
        async {
            let size = WindowSize {
                columns: col_width,
                rows: row_height,
                width: pix_width,
                height: pix_height,
            };
            let resized = self
                .sessions
                .get_mut(&channel)
                .is_some_and(|state| state.resize(size));
            Self::reply(session, channel, resized)
        }
        .instrument(span)
        .await
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let span = self.span.clone();
        async {
            let delivered = self
                .sessions
                .get(&channel)
                .is_some_and(|state| state.signal(&signal));
            debug!(channel = %channel, ?signal, delivered, "signal requested");
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let handle = session.handle();
        let span = self.span.clone();
        async {
            if !self.settings.agent_forwarding || !self.permissions.agent_forwarding {
                info!(channel = %channel, "agent forwarding rejected: disabled");
                return Ok(false);
            }
            if self.agent.is_none() {
                match AgentSocket::start(handle, Arc::clone(&self.state)) {
                    Ok(agent) => self.agent = Some(agent),
                    Err(error) => {
                        warn!(channel = %channel, %error, "cannot create the agent socket");
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        }
        .instrument(span)
        .await
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let handle = session.handle();
        let span = self.span.clone();
        async {
            if !self.remote_forwarding_allowed() {
                info!(
                    address,
                    port = *port,
                    "tcpip-forward rejected: forwarding disabled"
                );
                return Ok(false);
            }
            let Ok(requested_port) = u16::try_from(*port) else {
                return Ok(false);
            };
            let addresses = match forward::bind_addresses(address, &self.settings.resolver).await {
                Ok(addresses) => addresses,
                Err(error) => {
                    info!(address, %error, "tcpip-forward rejected: cannot resolve the address");
                    return Ok(false);
                }
            };
            let (listeners, bound_port) = match forward::bind(&addresses, requested_port).await {
                Ok(bound) => bound,
                Err(error) => {
                    info!(address, port = requested_port, %error, "tcpip-forward rejected: cannot bind");
                    return Ok(false);
                }
            };
            *port = u32::from(bound_port);
            info!(address, port = bound_port, "tcpip-forward listening");
            let tasks = forward::spawn_listeners(
                listeners,
                address.to_owned(),
                bound_port,
                handle,
                Arc::clone(&self.state),
            );
            if let Some(previous) = self
                .remote_forwards
                .insert((address.to_owned(), *port), tasks)
            {
                previous.iter().for_each(JoinHandle::abort);
            }
            Ok(true)
        }
        .instrument(span)
        .await
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let span = self.span.clone();
        async {
            match self.remote_forwards.remove(&(address.to_owned(), port)) {
                Some(tasks) => {
                    tasks.iter().for_each(JoinHandle::abort);
                    info!(address, port, "tcpip-forward cancelled");
                    Ok(true)
                }
                None => Ok(false),
            }
        }
        .instrument(span)
        .await
    }
}
