//! Revocation: live connections are re-checked whenever a watched object changes and once a
//! second (for `expiresAt`), and each connection that lost its access is closed with a message.
//!
//! A connection loses its access when its key leaves `acceptedKeys`, its SSHAccess expires or
//! is deleted, or its session is deleted. A connection routed to a running session is also
//! closed when the session is hibernated or stops running.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use api::{AmaltheaSession, SshAccess};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use tracing::info;

use crate::audit::{Metrics, ReasonLabel};
use crate::auth::{Denial, Proof, recheck};
use crate::cache::Caches;
use crate::routing::{Availability, Lookup, RouteSettings, route};

/// Interval of the periodic re-check, which catches `expiresAt` passing without any change.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Pause after a change before re-checking, so that a burst of changes costs one pass.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Something that can be closed with a message to the user.
pub trait Revocable: Send + Sync {
    /// Closes the connection, showing `message` to the user.
    fn revoke(&self, message: String);
}

/// A connection the revocation loop watches.
pub struct Watched {
    /// Namespace of the session.
    pub namespace: String,
    /// Session name.
    pub session: String,
    /// Fingerprint of the key that logged in, or empty for a device login without a key.
    pub fingerprint: String,
    /// Proof the login gave, checked again on every pass.
    pub proof: Proof,
    /// Whether the session was reachable at login; only then do hibernation and pod loss
    /// close the connection.
    pub routed: bool,
    /// The connection.
    pub target: Arc<dyn Revocable>,
}

/// Live connections by connection number.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<u64, Watched>>,
}

impl Registry {
    /// Starts watching a connection.
    pub fn insert(&self, id: u64, watched: Watched) {
        self.lock().insert(id, watched);
    }

    /// Stops watching a connection.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Returns the number of watched connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Returns whether no connection is watched.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watched>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-checks every connection against `lookup` at `now`, closes those that lost access and
    /// removes them from the registry. Returns the number closed.
    pub fn check(
        &self,
        lookup: &impl Lookup,
        settings: &RouteSettings,
        now: Timestamp,
        metrics: &Metrics,
    ) -> usize {
        let mut revoked = Vec::new();
        {
            let mut entries = self.lock();
            entries.retain(
                |id, watched| match verdict(lookup, settings, watched, now) {
                    Ok(()) => true,
                    Err((reason, message)) => {
                        revoked.push((*id, Arc::clone(&watched.target), reason, message));
                        false
                    }
                },
            );
        }
        let count = revoked.len();
        for (id, target, reason, message) in revoked {
            info!(
                connection = id,
                reason, message, "closing connection: access ended"
            );
            metrics
                .revocations
                .get_or_create(&ReasonLabel {
                    reason: reason.to_owned(),
                })
                .inc();
            target.revoke(message);
        }
        count
    }
}

/// Returns `Err((reason label, user message))` when the connection must be closed.
fn verdict(
    lookup: &impl Lookup,
    settings: &RouteSettings,
    watched: &Watched,
    now: Timestamp,
) -> Result<(), (&'static str, String)> {
    let session = &watched.session;
    let grant = match recheck(lookup, session, &watched.fingerprint, &watched.proof, now) {
        Ok(grant) if grant.namespace == watched.namespace => grant,
        Ok(_) => {
            return Err((
                "access_moved",
                format!("SSH access to session {session} changed"),
            ));
        }
        Err(denial) => return Err((denial.as_str(), denial_message(denial, watched))),
    };
    if watched.routed
        && let Availability::Unavailable(message) = route(lookup, &grant, settings)
    {
        return Err(("session_unavailable", message));
    }
    Ok(())
}

fn denial_message(denial: Denial, watched: &Watched) -> String {
    let session = &watched.session;
    match denial {
        Denial::KeyNotAccepted => format!(
            "your key {} is no longer accepted for session {session}: connection closed",
            watched.fingerprint
        ),
        Denial::Expired => format!("SSH access to session {session} has expired or was removed"),
        Denial::UnknownSession => format!("SSH access to session {session} was removed"),
        Denial::SessionMissing => format!("session {session} was deleted"),
        Denial::OwnerMismatch | Denial::Ambiguous => {
            format!("SSH access to session {session} changed: connect again")
        }
        Denial::DeviceFlowDisabled => format!(
            "login without a key was turned off for session {session}: connect with a \
             registered key"
        ),
    }
}

/// A one-pass index of the caches: SSHAccesses grouped by session name, so that a pass over
/// many connections scans the SSHAccess store once.
struct Snapshot<'a> {
    caches: &'a Caches,
    accesses: HashMap<String, Vec<Arc<SshAccess>>>,
}

impl Lookup for Snapshot<'_> {
    fn accesses_for_session(&self, session: &str) -> Vec<Arc<SshAccess>> {
        self.accesses.get(session).cloned().unwrap_or_default()
    }

    fn session(&self, namespace: &str, name: &str) -> Option<Arc<AmaltheaSession>> {
        self.caches.session(namespace, name)
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.caches.pod(namespace, name)
    }

    fn approvals_for_session(&self, session: &str) -> Vec<crate::device::Approval> {
        self.caches.approvals_for_session(session)
    }
}

/// Runs the revocation loop until the task is dropped.
pub async fn run(
    registry: Arc<Registry>,
    caches: Caches,
    settings: RouteSettings,
    metrics: Metrics,
) {
    let mut changes = caches.changes();
    let mut ticker = tokio::time::interval(RECHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep(DEBOUNCE).await;
                changes.borrow_and_update();
            }
            _ = ticker.tick() => {}
        }
        if registry.is_empty() {
            continue;
        }
        let snapshot = Snapshot {
            caches: &caches,
            accesses: caches.accesses_by_session(),
        };
        registry.check(&snapshot, &settings, Timestamp::now(), &metrics);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::auth::tests::{access, session};
    use crate::config::UpstreamMode;
    use crate::routing::tests::{HOST_KEY, Objects, running_pod};

    #[derive(Default)]
    struct Recorder {
        messages: Mutex<Vec<String>>,
        count: AtomicUsize,
    }

    impl Revocable for Recorder {
        fn revoke(&self, message: String) {
            self.count.fetch_add(1, Ordering::SeqCst);
            self.messages.lock().expect("lock").push(message);
        }
    }

    fn objects(keys: &[&str], hibernated: bool) -> Objects {
        let mut objects = Objects::default();
        let mut ssh_access = access("ns", "s1", "alice", keys);
        ssh_access.status.get_or_insert_default().host_key = Some(api::ssh_access::HostKey {
            fingerprint: "SHA256:h".into(),
            known_hosts_line: format!("s1 {HOST_KEY}"),
        });
        objects.accesses.push(Arc::new(ssh_access));
        let mut session = session("ns", "s1", "alice");
        session.spec.hibernated = hibernated;
        objects
            .sessions
            .insert(("ns".into(), "s1".into()), Arc::new(session));
        objects.pods.insert(
            ("ns".into(), "s1-0".into()),
            Arc::new(running_pod("ns", "s1-0", "10.0.0.9")),
        );
        objects
    }

    fn watch(registry: &Registry, recorder: &Arc<Recorder>) {
        registry.insert(
            1,
            Watched {
                namespace: "ns".into(),
                session: "s1".into(),
                fingerprint: "SHA256:a".into(),
                proof: Proof::Key,
                routed: true,
                target: Arc::clone(recorder) as Arc<dyn Revocable>,
            },
        );
    }

    fn settings() -> RouteSettings {
        RouteSettings {
            mode: UpstreamMode::PodIp,
            sidecar_port: 2222,
            service_domain: "svc".into(),
        }
    }

    #[test]
    fn connection_with_access_stays() {
        let registry = Registry::default();
        let recorder = Arc::new(Recorder::default());
        watch(&registry, &recorder);

        let closed = registry.check(
            &objects(&["SHA256:a"], false),
            &settings(),
            Timestamp::now(),
            &Metrics::default(),
        );

        assert_eq!(closed, 0);
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn removed_key_closes_connection() {
        let registry = Registry::default();
        let recorder = Arc::new(Recorder::default());
        watch(&registry, &recorder);

        let closed = registry.check(
            &objects(&["SHA256:b"], false),
            &settings(),
            Timestamp::now(),
            &Metrics::default(),
        );

        assert_eq!(closed, 1);
        assert!(registry.is_empty());
        let messages = recorder.messages.lock().expect("lock");
        assert!(
            messages[0].contains("SHA256:a is no longer accepted"),
            "{messages:?}"
        );
    }

    #[test]
    fn hibernation_closes_routed_connection() {
        let registry = Registry::default();
        let recorder = Arc::new(Recorder::default());
        watch(&registry, &recorder);

        registry.check(
            &objects(&["SHA256:a"], true),
            &settings(),
            Timestamp::now(),
            &Metrics::default(),
        );

        let messages = recorder.messages.lock().expect("lock");
        assert!(messages[0].contains("is hibernated"), "{messages:?}");
    }

    #[test]
    fn deleted_access_closes_connection() {
        let registry = Registry::default();
        let recorder = Arc::new(Recorder::default());
        watch(&registry, &recorder);
        let mut objects = objects(&["SHA256:a"], false);
        objects.accesses.clear();

        registry.check(&objects, &settings(), Timestamp::now(), &Metrics::default());

        assert_eq!(recorder.count.load(Ordering::SeqCst), 1);
        let messages = recorder.messages.lock().expect("lock");
        assert!(messages[0].contains("was removed"), "{messages:?}");
    }
}
