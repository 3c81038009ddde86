//! Watch caches of the objects that logins are checked against: SSHAccesses, AmaltheaSessions,
//! session Pods and the ConfigMaps that record device-login approvals. A login reads these in-memory stores and makes no API request.
//!
//! Every change to a watched object bumps a shared counter, which the revocation loop watches
//! to re-check live connections.

use std::collections::HashMap;
use std::sync::Arc;

use api::{AmaltheaSession, SshAccess};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use russh::keys::PublicKey;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::device::{APPROVAL_SELECTOR, Approval, SESSION_LABEL};
use crate::routing::Lookup;

/// Label selector of the pods amalthea runs for sessions.
pub const SESSION_POD_SELECTOR: &str = "app.kubernetes.io/name=AmaltheaSession";

/// Read handles of the watch caches.
#[derive(Clone)]
pub struct Caches {
    accesses: Store<SshAccess>,
    sessions: Store<AmaltheaSession>,
    pods: Store<Pod>,
    approvals: Option<(Store<ConfigMap>, PublicKey)>,
    changes: watch::Receiver<u64>,
}

impl Caches {
    /// Starts the watches for `namespace` (all namespaces when `None`) on the current runtime.
    /// The stores fill in the background; see [`Caches::wait_until_ready`].
    /// Approvals are watched only with `approval_key`, the public key that must have signed
    /// them (the gateway's host key).
    pub fn start(client: Client, namespace: Option<&str>, approval_key: Option<PublicKey>) -> Self {
        let (changed, changes) = watch::channel(0u64);
        let accesses = spawn_reflector::<SshAccess>(
            api(&client, namespace),
            watcher::Config::default(),
            changed.clone(),
            |object| {
                object.metadata.managed_fields = None;
            },
        );
        let sessions = spawn_reflector::<AmaltheaSession>(
            api(&client, namespace),
            watcher::Config::default(),
            changed.clone(),
            |object| {
                object.metadata.managed_fields = None;
                // Only the owner label, `hibernated` and `status.state` are read; the session's
                // container spec is by far the largest part and is dropped to save memory.
                object.spec.session.env = None;
                object.spec.extra_containers = None;
                object.spec.init_containers = None;
                object.spec.extra_volumes = None;
            },
        );
        let approvals = approval_key.map(|key| {
            let store = spawn_reflector::<ConfigMap>(
                api(&client, namespace),
                watcher::Config::default().labels(APPROVAL_SELECTOR),
                changed.clone(),
                |object| {
                    object.metadata.managed_fields = None;
                },
            );
            (store, key)
        });
        let pods = spawn_reflector::<Pod>(
            api(&client, namespace),
            watcher::Config::default().labels(SESSION_POD_SELECTOR),
            changed,
            |pod| {
                pod.metadata.managed_fields = None;
                pod.metadata.annotations = None;
                pod.spec = None;
                if let Some(status) = pod.status.as_mut() {
                    status.container_statuses = None;
                    status.init_container_statuses = None;
                }
            },
        );
        Self {
            accesses,
            sessions,
            pods,
            approvals,
            changes,
        }
    }

    /// Waits until every store has its initial list.
    pub async fn wait_until_ready(&self) {
        let approvals = async {
            match &self.approvals {
                Some((store, _)) => store.wait_until_ready().await.is_ok(),
                None => true,
            }
        };
        let results = futures::join!(
            self.accesses.wait_until_ready(),
            self.sessions.wait_until_ready(),
            self.pods.wait_until_ready(),
            approvals
        );
        if results.0.is_err() || results.1.is_err() || results.2.is_err() || !results.3 {
            warn!("a watch ended before its cache synced");
        }
    }

    /// Returns a receiver that changes whenever a watched object changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Returns every SSHAccess grouped by `spec.sessionRef.name`.
    pub fn accesses_by_session(&self) -> HashMap<String, Vec<Arc<SshAccess>>> {
        let mut index: HashMap<String, Vec<Arc<SshAccess>>> = HashMap::new();
        for access in self.accesses.state() {
            index
                .entry(access.spec.session_ref.name.clone())
                .or_default()
                .push(access);
        }
        index
    }
}

impl Lookup for Caches {
    fn accesses_for_session(&self, session: &str) -> Vec<Arc<SshAccess>> {
        self.accesses
            .state_filter(|access| access.spec.session_ref.name == session)
    }

    fn session(&self, namespace: &str, name: &str) -> Option<Arc<AmaltheaSession>> {
        self.sessions
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    fn approvals_for_session(&self, session: &str) -> Vec<Approval> {
        let Some((store, key)) = &self.approvals else {
            return Vec::new();
        };
        store
            .state_filter(|object| {
                object
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get(SESSION_LABEL))
                    .is_some_and(|name| name == session)
            })
            .iter()
            .filter_map(|object| Approval::from_object(object))
            .filter(|approval| {
                let valid = approval.verify(key);
                if !valid {
                    tracing::debug!(
                        session,
                        fingerprint = approval.fingerprint,
                        "ignoring an approval without a valid gateway signature"
                    );
                }
                valid
            })
            .collect()
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: watch::Sender<u64>,
    trim: fn(&mut K),
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    <K as Resource>::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let kind = K::kind(&Default::default()).to_string();
    let stream = watcher(api, config).default_backoff().modify(trim);
    let events = reflector::reflector(writer, stream);
    tokio::spawn(drive(events, kind, changed));
    store
}

async fn drive<S, K, E>(events: S, kind: String, changed: watch::Sender<u64>)
where
    S: Stream<Item = Result<watcher::Event<K>, E>>,
    E: std::fmt::Display,
{
    let mut events = std::pin::pin!(events);
    let mut failing = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if failing {
                    info!(kind, "watch recovered");
                    failing = false;
                }
                if matches!(event, watcher::Event::InitDone) {
                    info!(kind, "watch cache synced");
                }
                changed.send_modify(|generation| *generation = generation.wrapping_add(1));
            }
            Err(error) => {
                // The watcher retries with backoff; log once per failing streak.
                if !failing {
                    warn!(kind, %error, "watch failed; retrying with backoff");
                    failing = true;
                }
            }
        }
    }
    warn!(kind, "watch stream ended");
}
