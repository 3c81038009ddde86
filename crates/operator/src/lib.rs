//! `renku-ssh-operator`: keeps SSH access to Renku sessions in step with the cluster.
//!
//! Two controllers run on the replica that holds the leader Lease ([`leader`]):
//!
//! - [`session`]: one `SSHAccess` per AmaltheaSession that the SSH policy enables.
//! - [`access`]: for each `SSHAccess`, the keys Secret, host key Secret, Service,
//!   NetworkPolicy and status.
//!
//! [`Operator`] is the library entry point; the binary only parses flags, sets up logging and
//! connects to the cluster. Tests run it in-process against a real API server.
//!
//! ```no_run
//! # async fn start(client: kube::Client) -> Result<(), operator::Error> {
//! use clap::Parser;
//!
//! let args = operator::Args::parse_from([
//!     "renku-ssh-operator",
//!     "--gateway-host=ssh.renku.example.org",
//!     "--ca-secret=renku/renku-ssh-ca",
//! ]);
//! let config = args.into_config()?;
//! let operator = operator::Operator::new(config, client).await?;
//! operator.run(admin::shutdown_signal()).await
//! # }
//! ```

pub mod access;
pub mod ca;
pub mod config;
pub mod error;
pub mod events;
pub mod keygen;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod refresh;
pub mod session;
pub mod userprefs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use admin::{AdminServer, Health};
use api::SshAccess;
use axum::Router;
use futures::{Stream, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use crate::config::{Args, Config, ConfigError, SshPolicy};
use crate::events::EventPublisher;
use crate::leader::LeaderElector;
use crate::metrics::{METRIC_PREFIX, Metrics};
use crate::refresh::RegistrySlot;
use crate::userprefs::{UserKeyRegistry, UserPreferencesClient};

/// Interval between attempts to read or create the CA Secret while it fails.
const CA_RETRY: Duration = Duration::from_secs(5);

/// A failure that stops the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The admin server could not start.
    #[error(transparent)]
    Admin(#[from] admin::Error),
    /// The admin server failed while serving.
    #[error("the admin server failed: {0}")]
    AdminServe(#[source] std::io::Error),
    /// The user-preferences client could not be built.
    #[error("cannot set up the user-preferences source: {0}")]
    UserPreferences(String),
    /// Another replica took the Lease, or renewing it failed for too long. The process should
    /// exit so that it restarts as a follower.
    #[error("lost the leader Lease; exiting so that this replica restarts as a follower")]
    LeadershipLost,
}

/// Returns an API handle for a namespaced kind in `namespace`, or in all namespaces.
pub(crate) fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Passes a watch stream through and fires `synced` whenever a list completes; the reflector
/// upstream has applied it to its store by then.
///
/// Anything besides the controller that must know when its cache is complete uses this token.
/// [`reflector::Store::wait_until_ready`] keeps one waker per store (kube-runtime 5.0), so a second
/// waiter would take the wake-up away from the controller's own runner.
pub(crate) fn signal_synced<K, S>(
    stream: S,
    synced: CancellationToken,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    stream.inspect_ok(move |event| {
        if matches!(event, watcher::Event::InitDone) {
            synced.cancel();
        }
    })
}

/// Drives a controller until it ends.
///
/// A stop that comes before the controller's cache completed its first list drops the
/// controller instead of waiting for it: kube-runtime 5.0 delays reconciles until the cache is
/// complete, and once the stop has ended the watch the cache never completes, so its graceful
/// shutdown would wait forever. No reconcile has started at that point.
pub(crate) async fn drive_controller(
    controller: impl Future<Output = ()>,
    synced: &CancellationToken,
    stop: &CancellationToken,
) {
    let stopped_before_sync = async {
        stop.cancelled().await;
        if synced.is_cancelled() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = controller => {}
        () = stopped_before_sync => {
            tracing::debug!("stopped before the cache completed its first list");
        }
    }
}

/// The operator: admin server, leader election and the two controllers.
pub struct Operator {
    config: Arc<Config>,
    client: Client,
    health: Health,
    metrics: Arc<Metrics>,
    admin: AdminServer,
    user_preferences: Option<Arc<UserPreferencesClient>>,
    registry_slot: RegistrySlot,
}

impl Operator {
    /// Binds the admin server and prepares the user-preferences client. Nothing runs until
    /// [`Operator::run`].
    pub async fn new(config: Config, client: Client) -> Result<Self, Error> {
        Self::new_with_registry(config, client, Registry::default()).await
    }

    /// Like [`Operator::new`], but serves the metrics already in `registry` (for example the
    /// admission webhook's) on `/metrics` beside the operator's, which are added under the
    /// prefix `renku_ssh_operator`.
    pub async fn new_with_registry(
        config: Config,
        client: Client,
        mut registry: Registry,
    ) -> Result<Self, Error> {
        let metrics = Arc::new(Metrics::register(
            registry.sub_registry_with_prefix(METRIC_PREFIX),
        ));
        let health = Health::default();
        let registry_slot = RegistrySlot::default();
        let extra = match &config.refresh_token {
            Some(token) => refresh::router(token.clone(), Arc::clone(&registry_slot)),
            None => Router::new(),
        };
        let admin = AdminServer::bind(
            config.admin_address,
            health.clone(),
            Arc::new(registry),
            extra,
        )
        .await?;
        let user_preferences = match &config.user_preferences {
            Some(settings) => {
                let tokens = userprefs::token_source(&settings.token, settings.request_timeout)
                    .map_err(|error| Error::UserPreferences(error.to_string()))?;
                let client = UserPreferencesClient::new(
                    settings.url.clone(),
                    tokens,
                    settings.request_timeout,
                )
                .map_err(|error| Error::UserPreferences(error.to_string()))?;
                Some(Arc::new(client))
            }
            None => None,
        };
        Ok(Self {
            config: Arc::new(config),
            client,
            health,
            metrics,
            admin,
            user_preferences,
            registry_slot,
        })
    }

    /// Returns the address the admin server is bound to.
    pub fn admin_address(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Runs until `shutdown` completes. The replica waits as a follower until it acquires the
    /// leader Lease, then runs the controllers, and on shutdown stops them and releases the Lease.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Self {
            config,
            client,
            health,
            metrics,
            admin,
            user_preferences,
            registry_slot,
        } = self;
        let stop = CancellationToken::new();
        let stop_on_signal = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop_on_signal.cancel();
        });
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(admin.serve(admin_stop.clone().cancelled_owned()));
        let term = Term {
            config,
            client,
            health,
            metrics,
            user_preferences,
            registry_slot,
        };
        let result = term.lead(stop).await;
        admin_stop.cancel();
        match admin_task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(Error::AdminServe(error)),
            Err(error) => tracing::warn!(%error, "admin server task failed"),
        }
        tracing::info!("operator stopped");
        result
    }
}

/// State that every leadership term of the process uses.
struct Term {
    config: Arc<Config>,
    client: Client,
    health: Health,
    metrics: Arc<Metrics>,
    user_preferences: Option<Arc<UserPreferencesClient>>,
    registry_slot: RegistrySlot,
}

impl Term {
    /// Waits for the leader Lease, then runs the controllers until `stop` fires or leadership
    /// is lost, and releases the Lease on a clean stop.
    async fn lead(&self, stop: CancellationToken) -> Result<(), Error> {
        let lease_namespace = self
            .config
            .leader
            .namespace
            .clone()
            .unwrap_or_else(|| self.client.default_namespace().to_owned());
        let elector = Arc::new(LeaderElector::new(
            self.client.clone(),
            &lease_namespace,
            self.config.leader.clone(),
        ));
        // A replica standing by is ready: it serves its admin routes and can take over.
        self.health.set_ready(true);
        if !elector.acquire(&stop).await {
            return Ok(());
        }

        let lost = self.serve_term(&elector, &stop).await;
        if lost {
            return Err(Error::LeadershipLost);
        }
        if let Err(error) = elector.release().await {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "failed to release the leader Lease"
            );
        }
        Ok(())
    }

    /// Runs the controllers while this replica leads. Returns `true` when leadership was lost,
    /// `false` when `stop` ended the term.
    async fn serve_term(&self, elector: &Arc<LeaderElector>, stop: &CancellationToken) -> bool {
        self.metrics.set_leader(true);
        self.health.set_ready(false);
        let term = stop.child_token();
        let (lost, renewal) = elector.spawn_renewal(term.clone());
        let end_on_loss = {
            let (term, lost) = (term.clone(), lost.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = lost.cancelled() => term.cancel(),
                    () = term.cancelled() => {}
                }
            })
        };

        self.run_controllers(&term).await;

        term.cancel();
        let _ = end_on_loss.await;
        // The renewal task must end before a release, or a renewal in flight could write the
        // Lease again afterwards.
        let _ = renewal.await;
        *self
            .registry_slot
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = None;
        self.metrics.set_leader(false);
        self.health.set_ready(false);
        lost.is_cancelled()
    }

    /// Runs both controllers until `term` fires.
    async fn run_controllers(&self, term: &CancellationToken) {
        let Some(ca) = self.certificate_authority(term).await else {
            return;
        };
        let (reader, writer) = reflector::store::<SshAccess>();
        let events = EventPublisher::new(self.client.clone(), &self.config.leader.identity);
        let (user_keys, user_keys_changed) = match &self.user_preferences {
            Some(client) => {
                let poll_interval = self
                    .config
                    .user_preferences
                    .as_ref()
                    .map_or(Duration::from_secs(60), |settings| settings.poll_interval);
                let (registry, changes) = UserKeyRegistry::new(
                    Arc::clone(client),
                    poll_interval,
                    reader.clone(),
                    Arc::clone(&self.metrics),
                    term.clone(),
                );
                (Some(registry), Some(changes))
            }
            None => (None, None),
        };
        *self
            .registry_slot
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = user_keys.clone();

        let access_context = Arc::new(access::Context {
            client: self.client.clone(),
            config: Arc::clone(&self.config),
            ca,
            events: events.clone(),
            metrics: Arc::clone(&self.metrics),
            user_keys,
            failures: Default::default(),
        });
        let session_context = Arc::new(session::Context {
            client: self.client.clone(),
            policy: self.config.ssh_policy,
            user_preferences: self.config.user_preferences.is_some(),
            accesses: reader.clone(),
            events,
            metrics: Arc::clone(&self.metrics),
        });
        let accesses_synced = CancellationToken::new();
        let sessions_synced = CancellationToken::new();
        let readiness = {
            let health = self.health.clone();
            let (accesses_synced, sessions_synced, term) = (
                accesses_synced.clone(),
                sessions_synced.clone(),
                term.clone(),
            );
            tokio::spawn(async move {
                tokio::select! {
                    () = term.cancelled() => {}
                    () = async {
                        accesses_synced.cancelled().await;
                        sessions_synced.cancelled().await;
                    } => {
                        tracing::info!("caches synced; controllers running");
                        health.set_ready(true);
                    }
                }
            })
        };
        tokio::join!(
            access::run(
                access_context,
                reader,
                writer,
                user_keys_changed,
                accesses_synced.clone(),
                term.clone()
            ),
            session::run(
                session_context,
                self.config.namespace.clone(),
                self.config.concurrency,
                session::Sync {
                    accesses: accesses_synced,
                    sessions: sessions_synced,
                },
                term.clone(),
            ),
        );
        readiness.abort();
    }

    /// Reads or creates the CA Secret, retrying until it succeeds or `term` fires.
    // NOTE: the CA is read once per leadership term and not watched, so a CA replaced by hand
    // reaches the keys Secrets only after the next leader change.
    async fn certificate_authority(
        &self,
        term: &CancellationToken,
    ) -> Option<ca::CertificateAuthority> {
        loop {
            match ca::ensure(&self.client, &self.config.ca_secret).await {
                Ok(ca) => return Some(ca),
                Err(error) => tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "cannot use the certificate authority; retrying"
                ),
            }
            tokio::select! {
                () = term.cancelled() => return None,
                () = tokio::time::sleep(CA_RETRY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::{StreamExt, stream};
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    #[tokio::test]
    async fn signal_synced_fires_after_the_list() {
        let synced = CancellationToken::new();
        let events = vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(ConfigMap::default())),
            Ok(watcher::Event::InitDone),
        ];
        let mut passed = Box::pin(signal_synced(stream::iter(events), synced.clone()));
        for _ in 0..2 {
            passed.next().await;
            assert!(!synced.is_cancelled());
        }
        passed.next().await;
        assert!(synced.is_cancelled());
    }

    #[tokio::test]
    async fn stop_before_sync_drops_the_controller() {
        let (synced, stop) = (CancellationToken::new(), CancellationToken::new());
        stop.cancel();
        let ended = tokio::time::timeout(
            Duration::from_secs(2),
            drive_controller(std::future::pending(), &synced, &stop),
        )
        .await;
        assert!(
            ended.is_ok(),
            "an unsynced controller must be dropped on stop"
        );
    }

    #[tokio::test]
    async fn stop_after_sync_waits_for_the_controller() {
        let (synced, stop) = (CancellationToken::new(), CancellationToken::new());
        synced.cancel();
        stop.cancel();
        let ended = tokio::time::timeout(
            Duration::from_millis(200),
            drive_controller(std::future::pending(), &synced, &stop),
        )
        .await;
        assert!(
            ended.is_err(),
            "a synced controller shuts down on its own terms"
        );
    }
}
