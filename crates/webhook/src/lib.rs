//! Mutating admission webhook that adds the `renku-sshd` sidecar to the pods of SSH-enabled
//! Renku sessions.
//!
//! On pod CREATE for an amalthea session pod (label `app.kubernetes.io/name=AmaltheaSession`,
//! session name in `app.kubernetes.io/instance`) whose session has SSH enabled by the
//! [`SshPolicy`], the webhook responds with a JSON patch that adds an init container copying the
//! static `renku-sshd` into an `emptyDir`, a sidecar container running it, and the Secret volumes
//! with the session's keys and host key ([`sidecar`]). Every other pod is allowed unchanged, and
//! so is every pod when something fails: sessions always start, at worst without SSH.
//!
//! Decisions read watch caches ([`cache`]), never the API server. The server speaks HTTPS with a
//! self-managed or file-based certificate ([`tls`]).
//!
//! A binary runs it with [`Webhook::bind`] and [`Webhook::run`], or [`serve`] in one call:
//!
//! ```no_run
//! # async fn example(config: webhook::Config, client: kube::Client) -> Result<(), webhook::Error> {
//! let mut registry = prometheus_client::registry::Registry::default();
//! let webhook = webhook::Webhook::bind(config, client, &mut registry).await?;
//! webhook.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod admission;
pub mod cache;
pub mod config;
pub mod metrics;
pub mod policy;
pub mod registration;
pub mod server;
pub mod sidecar;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use crate::config::{Args, Config, ConfigError, TlsConfig};
pub use crate::metrics::Metrics;
pub use crate::policy::SshPolicy;
pub use crate::tls::TlsError;

use crate::admission::Admission;
use crate::cache::SessionCache;
use crate::config::{SelfManagedTls, service_dns_names};
use crate::tls::secret::SelfManagedCertificates;
use crate::tls::{CertResolver, files};

/// Interval between checks of the self-managed serving certificate for renewal.
const RENEWAL_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// Errors that stop the webhook.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The serving certificate could not be obtained.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The HTTPS server could not bind its address.
    #[error(
        "failed to bind the webhook server to {address}: {source}; choose a free address with --webhook-address"
    )]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The MutatingWebhookConfiguration could not be applied.
    #[error("failed to apply the MutatingWebhookConfiguration {name}: {source}")]
    Register {
        /// Name of the configuration.
        name: String,
        /// The client's error.
        source: kube::Error,
    },
}

/// Source of the current serving certificate.
enum CertificateSource {
    SelfManaged {
        tls: SelfManagedTls,
        certificates: SelfManagedCertificates,
    },
    Files {
        contents: files::FileContents,
    },
}

/// A bound, not yet serving webhook.
pub struct Webhook {
    config: Config,
    client: Client,
    listener: TcpListener,
    local_addr: SocketAddr,
    resolver: Arc<CertResolver>,
    source: CertificateSource,
    cache: Arc<SessionCache>,
    metrics: Metrics,
}

impl Webhook {
    /// Validates `config`, registers the metrics in `registry`, obtains the serving certificate
    /// (creating the self-managed Secret if needed) and binds the listen address.
    pub async fn bind(
        config: Config,
        client: Client,
        registry: &mut Registry,
    ) -> Result<Self, Error> {
        config.validate()?;
        let metrics = Metrics::register(registry);
        let (key, source) = match &config.tls {
            TlsConfig::SelfManaged(tls) => {
                let certificates =
                    tls::secret::ensure(&client, &tls.secret, &serving_names(tls)).await?;
                let key = tls::certified_key(
                    certificates.serving.cert_pem.as_bytes(),
                    certificates.serving.key_pem.as_bytes(),
                )?;
                (
                    key,
                    CertificateSource::SelfManaged {
                        tls: tls.clone(),
                        certificates,
                    },
                )
            }
            TlsConfig::Files(file_tls) => {
                let (key, contents) = files::load(file_tls).await?;
                (key, CertificateSource::Files { contents })
            }
        };
        let address = config.listen;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| Error::Bind { address, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { address, source })?;
        let cache = Arc::new(SessionCache::new(config.policy));
        Ok(Self {
            config,
            client,
            listener,
            local_addr,
            resolver: Arc::new(CertResolver::new(key)),
            source,
            cache,
            metrics,
        })
    }

    /// Returns the bound address; useful when the configured port is 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the PEM certificate of the self-managed CA, the `caBundle` clients need; `None`
    /// with certificate files.
    pub fn ca_bundle(&self) -> Option<&str> {
        match &self.source {
            CertificateSource::SelfManaged { certificates, .. } => Some(&certificates.ca.cert_pem),
            CertificateSource::Files { .. } => None,
        }
    }

    /// Returns the watch caches the admission decisions read.
    pub fn session_cache(&self) -> Arc<SessionCache> {
        self.cache.clone()
    }

    /// Returns a handle that reports whether the caches have synced, for a readiness probe.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            cache: self.cache.clone(),
        }
    }

    /// Applies the MutatingWebhookConfiguration when [`Config::registration`] is set, starts
    /// the caches and certificate upkeep, and serves admission reviews until `shutdown`
    /// completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Self {
            config,
            client,
            listener,
            local_addr,
            resolver,
            source,
            cache,
            metrics,
        } = self;
        if let Some(registration) = &config.registration {
            let ca_pem = match &source {
                CertificateSource::SelfManaged { certificates, .. } => {
                    Some(certificates.ca.cert_pem.as_bytes())
                }
                CertificateSource::Files { .. } => None,
            };
            let client_config = registration::url_client_config(&registration.url, ca_pem);
            let configuration = registration::webhook_configuration(
                &config.webhook_configuration,
                client_config,
                registration.namespace_selector.clone(),
            );
            registration::apply(&client, &configuration)
                .await
                .map_err(|source| Error::Register {
                    name: config.webhook_configuration.name.clone(),
                    source,
                })?;
            tracing::info!(configuration = %config.webhook_configuration.name, url = %registration.url, "applied the MutatingWebhookConfiguration");
        }

        let mut tasks = JoinSet::new();
        let watch_namespace = config.watch_namespace.clone();
        let watch_cache = cache.clone();
        let watch_client = client.clone();
        tasks.spawn(async move { watch_cache.run(watch_client, watch_namespace).await });
        match source {
            CertificateSource::SelfManaged { tls, certificates } => {
                let (ca_sender, ca_receiver) =
                    tokio::sync::watch::channel(certificates.ca.cert_pem.as_bytes().to_vec());
                if tls.sync_ca_bundle {
                    let reference = config.webhook_configuration.clone();
                    tasks.spawn(tls::ca_bundle::keep_in_sync(
                        client.clone(),
                        reference,
                        ca_receiver,
                    ));
                }
                let renewal = Renewal {
                    client: client.clone(),
                    tls,
                    resolver: resolver.clone(),
                    ca_sender,
                };
                tasks.spawn(renewal.run(certificates));
            }
            CertificateSource::Files { contents } => {
                if let TlsConfig::Files(file_tls) = &config.tls {
                    tasks.spawn(files::reload_on_change(
                        file_tls.clone(),
                        resolver.clone(),
                        contents,
                    ));
                }
            }
        }

        let admission = Admission::new(
            cache,
            config.injection.clone(),
            metrics,
            config.cache_sync_wait,
        );
        let tls_config = tls::server_config(resolver)?;
        tracing::info!(address = %local_addr, policy = %config.policy, "webhook serving");
        server::serve(listener, tls_config, server::router(admission), shutdown).await;
        tasks.shutdown().await;
        tracing::info!(address = %local_addr, "webhook stopped");
        Ok(())
    }
}

/// Binds and runs the webhook until `shutdown` completes; see [`Webhook`].
pub async fn serve(
    config: Config,
    client: Client,
    registry: &mut Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    Webhook::bind(config, client, registry)
        .await?
        .run(shutdown)
        .await
}

/// Reports whether the webhook's caches have completed their first list.
#[derive(Clone)]
pub struct Readiness {
    cache: Arc<SessionCache>,
}

impl Readiness {
    /// Returns whether the caches have synced.
    pub fn is_ready(&self) -> bool {
        self.cache.is_synced()
    }
}

/// Returns the names the self-managed serving certificate must list.
fn serving_names(tls: &SelfManagedTls) -> Vec<config::SubjectAltName> {
    let mut names = service_dns_names(&tls.service);
    for extra in &tls.extra_sans {
        if !names.contains(extra) {
            names.push(extra.clone());
        }
    }
    names
}

/// Upkeep of the self-managed certificate.
struct Renewal {
    client: Client,
    tls: SelfManagedTls,
    resolver: Arc<CertResolver>,
    /// The CA certificate, for the caBundle sync.
    ca_sender: tokio::sync::watch::Sender<Vec<u8>>,
}

impl Renewal {
    /// Re-runs [`tls::secret::ensure`] periodically, so that a serving certificate nearing
    /// expiry is reissued, and serves whatever the Secret then contains. A new CA (after someone
    /// deleted the Secret) also goes to the caBundle sync.
    async fn run(self, mut current: SelfManagedCertificates) {
        let names = serving_names(&self.tls);
        let mut interval = tokio::time::interval(RENEWAL_CHECK_INTERVAL);
        interval.tick().await;
        loop {
            interval.tick().await;
            let certificates = match tls::secret::ensure(&self.client, &self.tls.secret, &names)
                .await
            {
                Ok(certificates) => certificates,
                Err(error) => {
                    tracing::warn!(%error, secret = %self.tls.secret, "failed to check the webhook certificate; serving the current one");
                    continue;
                }
            };
            if certificates == current {
                continue;
            }
            let serving = &certificates.serving;
            match tls::certified_key(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes()) {
                Ok(key) => {
                    self.resolver.replace(key);
                    if certificates.ca != current.ca {
                        tracing::warn!(secret = %self.tls.secret, "the webhook CA changed; updating caBundle");
                        self.ca_sender
                            .send_replace(certificates.ca.cert_pem.as_bytes().to_vec());
                    }
                    tracing::info!(secret = %self.tls.secret, "serving the renewed webhook certificate");
                    current = certificates;
                }
                Err(error) => {
                    tracing::warn!(%error, secret = %self.tls.secret, "the renewed webhook certificate is invalid; serving the current one");
                }
            }
        }
    }
}
