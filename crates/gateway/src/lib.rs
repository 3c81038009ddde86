//! renku-ssh-gateway: the public SSH entry point of renku-ssh.
//!
//! `ssh <session>@<gateway>` logs in with one of the keys listed in the session's SSHAccess
//! status. The gateway then connects to the session's SSH sidecar with a short-lived
//! certificate and relays every channel. `ssh -J <session>@<gateway> <session>` gets a raw
//! connection to the sidecar instead, for an end-to-end login.
//!
//! Modules, in the order a connection meets them:
//! - [`config`]: flags and limits.
//! - [`cache`]: watch caches of SSHAccesses, sessions and pods.
//! - [`auth`]: the login policy; [`limits`]: rate limits and connection counts.
//! - [`routing`]: from a login to the sidecar's address and pinned host key.
//! - [`certificate`] and [`upstream`]: the second hop.
//! - [`connection`] and [`relay`]: the client's channels, relayed.
//! - [`revocation`]: closing connections whose access ended.
//! - [`audit`]: audit lines and metrics; [`server`]: accept loop and supervision.

pub mod audit;
pub mod auth;
pub mod cache;
pub mod certificate;
pub mod config;
pub mod connection;
pub mod device;
pub mod limits;
pub mod relay;
pub mod revocation;
pub mod routing;
pub mod server;
pub mod upstream;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use prometheus_client::registry::Registry as MetricsRegistry;
use russh::keys::{HashAlg, PrivateKey};
use russh::{Preferred, SshId, cipher};
use tokio::net::TcpListener;
use tokio::sync::RwLock;
use tracing::{info, warn};

use crate::audit::Metrics;
use crate::cache::Caches;
use crate::certificate::{CA_PRIVATE_KEY, CertificateAuthority};
use crate::config::{Config, HostKeySource, SecretName};
use crate::device::DeviceLogin;
use crate::limits::LimitState;
use crate::revocation::Registry;
use crate::routing::RouteSettings;
use crate::server::GatewayContext;
use crate::upstream::UpstreamSettings;

/// Data key of the host key Secret.
pub const HOST_KEY_SECRET_KEY: &str = "ssh_host_ed25519_key";
/// Interval between attempts to read the CA Secret while it is missing or invalid.
const CA_RETRY: Duration = Duration::from_secs(2);

/// Ciphers in OpenSSH's default order, limited to those russh implements.
const CIPHERS: &[cipher::Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_128_CTR,
    cipher::AES_192_CTR,
    cipher::AES_256_CTR,
    cipher::AES_128_GCM,
    cipher::AES_256_GCM,
];

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host key file cannot be read.
    #[error("cannot read host key {path}: {reason}; give an unencrypted OpenSSH private key")]
    HostKeyFile {
        /// Path.
        path: String,
        /// Cause.
        reason: String,
    },
    /// The host key Secret cannot be read.
    #[error("cannot read host key Secret {secret}: {reason}")]
    HostKeySecret {
        /// Secret.
        secret: String,
        /// Cause.
        reason: String,
    },
    /// The host key is of a type that clients refuse.
    #[error(
        "host key {source_name} is a DSA key, which OpenSSH clients no longer accept: generate \
         one with `ssh-keygen -t ed25519`"
    )]
    DsaHostKey {
        /// The file or Secret.
        source_name: String,
    },
    /// The device-flow settings are unusable.
    #[error("cannot set up login without a key: {0}")]
    DeviceFlow(#[source] oidc::Error),
    /// The listen address cannot be bound.
    #[error("cannot listen on {address}: {source}; choose a free address with --listen")]
    Listen {
        /// Address.
        address: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// A gateway bound to its address, ready to serve.
pub struct Gateway {
    listener: TcpListener,
    ssh_config: Arc<russh::server::Config>,
    context: Arc<GatewayContext>,
    shutdown_grace: Duration,
    revocation: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Loads the host key, starts the watch caches, the CA loader and the revocation loop,
    /// and binds the listen address. `health` turns ready once the caches have synced and the
    /// CA is loaded.
    pub async fn start(
        config: &Config,
        client: Client,
        metrics_registry: &mut MetricsRegistry,
        health: admin::Health,
    ) -> Result<Self, Error> {
        let host_key = load_host_key(&config.host_key, &client).await?;
        info!(
            fingerprint = %host_key.public_key().fingerprint(HashAlg::Sha256),
            "host key loaded"
        );
        let metrics = Metrics::default();
        metrics.register(metrics_registry);

        let device = match &config.device_flow {
            Some(settings) => {
                info!(
                    issuer = settings.issuer,
                    client_id = settings.client_id,
                    "login without a key offered through the device flow"
                );
                Some(Arc::new(
                    DeviceLogin::new(settings.clone(), host_key.clone())
                        .map_err(Error::DeviceFlow)?,
                ))
            }
            None => None,
        };
        let caches = Caches::start(
            client.clone(),
            config.watch_namespace.as_deref(),
            device.as_ref().map(|_| host_key.public_key().clone()),
        );
        let route_settings = RouteSettings {
            mode: config.upstream,
            sidecar_port: config.sidecar_port,
            service_domain: config.service_domain.clone(),
        };
        let context = Arc::new(GatewayContext {
            caches: caches.clone(),
            ca: RwLock::new(None),
            route_settings: route_settings.clone(),
            upstream_settings: UpstreamSettings {
                certificate_validity: config.certificate_validity,
                timeout: config.upstream_timeout,
            },
            limits: LimitState::new(config.limits.clone()),
            metrics: metrics.clone(),
            registry: Arc::new(Registry::default()),
            device,
            client: client.clone(),
        });
        tokio::spawn(load_ca(
            client,
            config.ca_secret.clone(),
            Arc::clone(&context),
            health,
        ));

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                address: config.listen,
                source,
            })?;
        let revocation = tokio::spawn(revocation::run(
            Arc::clone(&context.registry),
            caches,
            route_settings,
            metrics,
        ));
        Ok(Self {
            listener,
            ssh_config: Arc::new(ssh_config(config, host_key)),
            context,
            shutdown_grace: config.shutdown_grace,
            revocation,
        })
    }

    /// Returns the bound SSH address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then drains connections (see [`server::serve`]).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        match self.listener.local_addr() {
            Ok(address) => info!(%address, "listening"),
            Err(error) => info!(%error, "listening on an address the system cannot report"),
        }
        server::serve(
            self.listener,
            self.ssh_config,
            self.context,
            shutdown,
            self.shutdown_grace,
        )
        .await;
        self.revocation.abort();
        info!("stopped");
    }
}

fn ssh_config(config: &Config, host_key: PrivateKey) -> russh::server::Config {
    let mut preferred = Preferred::DEFAULT.clone();
    preferred.cipher = Cow::Borrowed(CIPHERS);
    russh::server::Config {
        server_id: SshId::Standard(Cow::Owned(format!(
            "SSH-2.0-renku-ssh-gateway_{}",
            env!("CARGO_PKG_VERSION")
        ))),
        methods: connection::methods(config.device_flow.is_some()),
        // Every rejection takes the same path through the watch caches, so an unknown session
        // and a rejected key cannot be distinguished by timing either.
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        max_auth_attempts: config.limits.max_auth_tries as usize,
        // The supervisor in server.rs applies LoginGraceTime and the idle timeout.
        inactivity_timeout: None,
        keepalive_interval: config.limits.client_alive_interval,
        keepalive_max: config.limits.client_alive_count_max as usize,
        nodelay: true,
        preferred,
        ..Default::default()
    }
}

async fn load_host_key(source: &HostKeySource, client: &Client) -> Result<PrivateKey, Error> {
    let key = read_host_key(source, client).await?;
    // OpenSSH clients no longer accept DSA host keys, and the gateway refuses DSA user keys.
    if key.algorithm() == russh::keys::Algorithm::Dsa {
        let source_name = match source {
            HostKeySource::File(path) => path.display().to_string(),
            HostKeySource::Secret(secret) => format!("Secret {secret}"),
        };
        return Err(Error::DsaHostKey { source_name });
    }
    Ok(key)
}

async fn read_host_key(source: &HostKeySource, client: &Client) -> Result<PrivateKey, Error> {
    match source {
        HostKeySource::File(path) => {
            russh::keys::load_secret_key(path, None).map_err(|error| Error::HostKeyFile {
                path: path.display().to_string(),
                reason: error.to_string(),
            })
        }
        HostKeySource::Secret(secret) => {
            let text = read_secret_value(client, secret, HOST_KEY_SECRET_KEY)
                .await
                .map_err(|reason| Error::HostKeySecret {
                    secret: secret.to_string(),
                    reason,
                })?;
            PrivateKey::from_openssh(&text).map_err(|error| Error::HostKeySecret {
                secret: secret.to_string(),
                reason: format!("{HOST_KEY_SECRET_KEY} is not an OpenSSH private key: {error}"),
            })
        }
    }
}

async fn read_secret_value(
    client: &Client,
    secret: &SecretName,
    key: &str,
) -> Result<String, String> {
    let api = Api::<Secret>::namespaced(client.clone(), &secret.namespace);
    let object = api
        .get_opt(&secret.name)
        .await
        .map_err(|error| error.to_string())?
        .ok_or_else(|| "the Secret does not exist".to_owned())?;
    let bytes = object
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .ok_or_else(|| format!("the Secret has no data key {key:?}"))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| format!("data key {key:?} is not UTF-8 text"))
}

/// Reads the CA Secret until it holds a valid key, then marks the gateway ready once the
/// caches have synced too. The operator creates the Secret once and never rotates it.
async fn load_ca(
    client: Client,
    secret: SecretName,
    context: Arc<GatewayContext>,
    health: admin::Health,
) {
    let mut warned = false;
    let ca = loop {
        let result = read_secret_value(&client, &secret, CA_PRIVATE_KEY)
            .await
            .and_then(|text| {
                CertificateAuthority::from_openssh(&text, &secret.to_string())
                    .map_err(|error| error.to_string())
            });
        match result {
            Ok(ca) => break ca,
            Err(reason) => {
                if !warned {
                    warn!(secret = %secret, reason, "cannot load the certificate authority yet; retrying");
                    warned = true;
                }
                tokio::time::sleep(CA_RETRY).await;
            }
        }
    };
    info!(secret = %secret, fingerprint = ca.fingerprint(), "certificate authority loaded");
    *context.ca.write().await = Some(Arc::new(ca));
    context.caches.wait_until_ready().await;
    health.set_ready(true);
    info!("ready");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dsa_host_key_is_rejected() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = folder.path().join("host_dsa");
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "dsa", "-N", "", "-f"])
            .arg(&path)
            .status()
            .expect("run ssh-keygen");
        assert!(status.success());
        // The file source never contacts the API server.
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("URL"));
        let client = Client::try_from(config).expect("client");

        let error = load_host_key(&HostKeySource::File(path), &client)
            .await
            .expect_err("DSA host key");
        assert!(matches!(error, Error::DsaHostKey { .. }), "{error}");
    }
}
