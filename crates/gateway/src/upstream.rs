//! The second hop: an SSH client connection from the gateway to the session's sidecar.
//!
//! It logs in with a fresh key and a short-lived user certificate signed by the gateway's CA.
//! The sidecar's host key must equal the one published in the SSHAccess status.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use russh::client::{self, ChannelOpenHandle, DisconnectReason, Msg};
use russh::keys::{HashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, Disconnect};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::certificate::{CertificateAuthority, CertificateError, CertificateRequest};
use crate::routing::{Address, Target};

/// Interval of keepalives on the second hop, so that a vanished pod is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Failures of the second hop. The `Display` text is shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("cannot reach the SSH server of session {session} at {address}: {reason}")]
    Connect {
        /// Session name.
        session: String,
        /// Address tried.
        address: String,
        /// Cause.
        reason: String,
    },
    /// The sidecar presented another host key than the SSHAccess status lists.
    #[error(
        "the SSH server of session {session} presented host key {presented}, but its SSHAccess \
         lists {expected}: connection aborted; ask an admin to check the session's host key"
    )]
    HostKeyMismatch {
        /// Session name.
        session: String,
        /// Fingerprint listed in the status.
        expected: String,
        /// Fingerprint presented.
        presented: String,
    },
    /// The SSH handshake failed.
    #[error("SSH handshake with the SSH server of session {session} failed: {reason}")]
    Handshake {
        /// Session name.
        session: String,
        /// Cause.
        reason: String,
    },
    /// The sidecar rejected the certificate.
    #[error(
        "the SSH server of session {session} rejected the gateway's certificate: the session may \
         not trust the gateway's CA yet; restart the session in Renku if this persists"
    )]
    Rejected {
        /// Session name.
        session: String,
    },
    /// Signing the certificate failed.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
}

/// The client side of a gateway connection, which the second hop calls for channels the
/// sidecar opens (remote forwarding, agent forwarding) and when it disconnects.
pub trait ClientSide: Send + Sync + 'static {
    /// Handles a `forwarded-tcpip` channel that the sidecar opened for a connection to a port
    /// the client requested with `tcpip-forward`. The implementation accepts or rejects `reply`.
    fn forwarded_tcpip(
        &self,
        channel: Channel<Msg>,
        target: ForwardedTcpip,
        reply: ChannelOpenHandle,
    );
    /// Handles an `auth-agent@openssh.com` channel that the sidecar opened.
    fn agent(&self, channel: Channel<Msg>, reply: ChannelOpenHandle);
    /// Handles the end of the second hop; `reason` is the text for the user.
    fn upstream_closed(&self, reason: String);
}

/// Addresses of a `forwarded-tcpip` channel.
#[derive(Debug, Clone)]
pub struct ForwardedTcpip {
    /// Address the listener was requested for.
    pub connected_address: String,
    /// Port of the listener.
    pub connected_port: u32,
    /// Address of the connecting peer.
    pub originator_address: String,
    /// Port of the connecting peer.
    pub originator_port: u32,
}

/// russh handler of the second-hop client connection.
struct UpstreamHandler {
    pinned: PublicKey,
    presented: Arc<Mutex<Option<String>>>,
    client_side: Arc<dyn ClientSide>,
}

impl client::Handler for UpstreamHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            // The status pins a plain key; a host certificate is not expected.
            PublicKeyOrCertificate::Certificate(certificate) => {
                let fingerprint = certificate.signature_key().fingerprint(HashAlg::Sha256);
                *self
                    .presented
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) =
                    Some(format!("a host certificate signed by {fingerprint}"));
                return Ok(false);
            }
        };
        let matches = key.key_data() == self.pinned.key_data();
        if !matches {
            *self
                .presented
                .lock()
                .unwrap_or_else(PoisonError::into_inner) =
                Some(key.fingerprint(HashAlg::Sha256).to_string());
        }
        Ok(matches)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let target = ForwardedTcpip {
            connected_address: connected_address.to_owned(),
            connected_port,
            originator_address: originator_address.to_owned(),
            originator_port,
        };
        self.client_side.forwarded_tcpip(channel, target, reply);
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.client_side.agent(channel, reply);
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let text = match &reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                format!(
                    "the session's SSH server closed the connection: {}",
                    info.message
                )
            }
            DisconnectReason::Error(error) => {
                format!("the connection to the session's SSH server failed: {error}")
            }
        };
        self.client_side.upstream_closed(text);
        match reason {
            DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            DisconnectReason::Error(error) => Err(error),
        }
    }
}

/// Identity of the login, written into the certificate.
#[derive(Debug, Clone)]
pub struct Identity<'a> {
    /// Session name: the certificate principal and the SSH user name.
    pub session: &'a str,
    /// Namespace of the session.
    pub namespace: &'a str,
    /// Identity-provider subject of the user.
    pub user: &'a str,
    /// Gateway connection id.
    pub connection_id: &'a str,
    /// Fingerprint of the user's key.
    pub fingerprint: &'a str,
    /// Forwarding the SSHAccess allows.
    pub forwarding: &'a api::ssh_access::Forwarding,
}

impl Identity<'_> {
    /// Returns the certificate key id: every fact an admin reading the sidecar log needs.
    pub fn key_id(&self) -> String {
        format!(
            "renku-ssh-gateway user={} session={}/{} connection={} key={}",
            self.user, self.namespace, self.session, self.connection_id, self.fingerprint
        )
    }
}

/// An authenticated second-hop connection.
pub struct Upstream {
    handle: client::Handle<UpstreamHandler>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

/// Settings of the second hop.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Validity of the certificates.
    pub certificate_validity: Duration,
    /// Time allowed to connect and log in.
    pub timeout: Duration,
}

impl Upstream {
    /// Connects to `target`, checks its host key and logs in with a new certificate.
    pub async fn connect(
        target: &Target,
        identity: &Identity<'_>,
        ca: &CertificateAuthority,
        settings: &UpstreamSettings,
        client_side: Arc<dyn ClientSide>,
    ) -> Result<Self, UpstreamError> {
        let session = identity.session.to_owned();
        let address = target.address.to_string();
        let connect_error = |reason: String| UpstreamError::Connect {
            session: session.clone(),
            address: address.clone(),
            reason,
        };
        let stream = tokio::time::timeout(settings.timeout, connect_tcp(&target.address))
            .await
            .map_err(|_| connect_error(format!("timed out after {:?}", settings.timeout)))?
            .map_err(|error| connect_error(error.to_string()))?;
        let _ = stream.set_nodelay(true);

        let presented = Arc::new(Mutex::new(None));
        let handler = UpstreamHandler {
            pinned: target.host_key.clone(),
            presented: Arc::clone(&presented),
            client_side,
        };
        let config = client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_max: 3,
            nodelay: true,
            ..client::Config::default()
        };
        let handshake = client::connect_stream(Arc::new(config), stream, handler);
        let handshake = tokio::time::timeout(settings.timeout, handshake)
            .await
            .map_err(|_| {
                connect_error(format!("handshake timed out after {:?}", settings.timeout))
            })?;
        let mut handle = match handshake {
            Ok(handle) => handle,
            Err(error) => {
                let presented = presented
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if let Some(presented) = presented {
                    return Err(UpstreamError::HostKeyMismatch {
                        session,
                        expected: target.host_key.fingerprint(HashAlg::Sha256).to_string(),
                        presented,
                    });
                }
                return Err(UpstreamError::Handshake {
                    session,
                    reason: error.to_string(),
                });
            }
        };

        let request = CertificateRequest {
            principal: identity.session,
            key_id: identity.key_id(),
            validity: settings.certificate_validity,
            forwarding: identity.forwarding,
        };
        let (key, certificate) = ca.issue(&request)?;
        let login = handle.authenticate_openssh_cert(identity.session, Arc::new(key), certificate);
        let result = tokio::time::timeout(settings.timeout, login)
            .await
            .map_err(|_| UpstreamError::Handshake {
                session: session.clone(),
                reason: format!("login timed out after {:?}", settings.timeout),
            })?
            .map_err(|error| UpstreamError::Handshake {
                session: session.clone(),
                reason: error.to_string(),
            })?;
        if !result.success() {
            return Err(UpstreamError::Rejected { session });
        }
        info!(address, "second hop logged in");
        Ok(Self { handle })
    }

    /// Opens a `session` channel.
    pub async fn open_session(&self) -> Result<Channel<Msg>, russh::Error> {
        self.handle.channel_open_session().await
    }

    /// Opens a `direct-tcpip` channel from the sidecar to `host:port`.
    pub async fn open_direct_tcpip(
        &self,
        host: &str,
        port: u32,
        originator_address: &str,
        originator_port: u32,
    ) -> Result<Channel<Msg>, russh::Error> {
        self.handle
            .channel_open_direct_tcpip(host, port, originator_address, originator_port)
            .await
    }

    /// Asks the sidecar to listen on `address:port`; returns the bound port.
    pub async fn tcpip_forward(&self, address: &str, port: u32) -> Result<u32, russh::Error> {
        self.handle.tcpip_forward(address, port).await
    }

    /// Stops a listener started by [`Upstream::tcpip_forward`].
    pub async fn cancel_tcpip_forward(&self, address: &str, port: u32) -> Result<(), russh::Error> {
        self.handle.cancel_tcpip_forward(address, port).await
    }

    /// Closes the connection.
    pub async fn disconnect(&self, reason: &str) {
        if let Err(error) = self
            .handle
            .disconnect(Disconnect::ByApplication, reason, "")
            .await
        {
            debug!(%error, "second hop already closed");
        }
    }
}

/// Connects a TCP stream to an address; names are resolved through the system resolver.
pub async fn connect_tcp(address: &Address) -> std::io::Result<TcpStream> {
    match address {
        Address::Socket(address) => TcpStream::connect(address).await,
        Address::Name(host, port) => {
            let stream = TcpStream::connect((host.as_str(), *port)).await;
            if let Err(error) = &stream {
                warn!(host, port, %error, "cannot connect to the session's Service");
            }
            stream
        }
    }
}
