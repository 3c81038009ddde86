//! Watch caches that decide "is SSH enabled for this session" without an API request per
//! admission.
//!
//! Two watches feed small in-memory indexes: the metadata of AmaltheaSessions (only the
//! annotation matters, so full objects are never kept) and SSHAccesses, indexed by the session
//! they refer to. A policy watches only what it reads: `all` nothing, `explicit` SSHAccesses,
//! `annotated` both.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use api::{AmaltheaSession, SshAccess};
use futures::StreamExt;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::policy::{SessionFacts, SshPolicy, has_enabled_annotation};

/// Namespace and name of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ObjectKey {
    namespace: String,
    name: String,
}

impl ObjectKey {
    fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    fn of<K: Resource>(object: &K) -> Self {
        Self {
            namespace: object.namespace().unwrap_or_default(),
            name: object.name_any(),
        }
    }
}

/// Objects of one kind as a watch reports them, with the list that a re-list builds up before it
/// replaces them.
struct WatchIndex<V> {
    objects: HashMap<ObjectKey, V>,
    relist: Option<HashMap<ObjectKey, V>>,
    synced: bool,
}

impl<V> Default for WatchIndex<V> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            relist: None,
            synced: false,
        }
    }
}

/// Applies one watch event. Objects seen during a re-list are buffered and replace the index at
/// `InitDone`, so lookups keep using the previous list meanwhile. Returns whether the
/// index holds a complete list for the first time.
fn apply_event<K: Resource, V>(
    index: &mut WatchIndex<V>,
    event: Event<K>,
    value_of: impl Fn(&K) -> V,
) -> bool {
    match event {
        Event::Apply(object) => {
            index
                .objects
                .insert(ObjectKey::of(&object), value_of(&object));
        }
        Event::Delete(object) => {
            index.objects.remove(&ObjectKey::of(&object));
        }
        Event::Init => index.relist = Some(HashMap::new()),
        Event::InitApply(object) => {
            let relist = index.relist.get_or_insert_with(HashMap::new);
            relist.insert(ObjectKey::of(&object), value_of(&object));
        }
        Event::InitDone => {
            index.objects = index.relist.take().unwrap_or_default();
            let first = !index.synced;
            index.synced = true;
            return first;
        }
    }
    false
}

/// SSHAccesses by the session they refer to.
#[derive(Default)]
struct AccessIndex {
    /// SSHAccess key -> key of the session it refers to.
    sessions: WatchIndex<ObjectKey>,
    /// Session key -> number of SSHAccesses that refer to it.
    counts: HashMap<ObjectKey, usize>,
}

impl AccessIndex {
    fn session_of(access: &SshAccess) -> ObjectKey {
        let namespace = access.namespace().unwrap_or_default();
        ObjectKey::new(&namespace, &access.spec.session_ref.name)
    }

    fn contains_session(&self, session: &ObjectKey) -> bool {
        self.counts.contains_key(session)
    }

    /// Applies one watch event and keeps the counts in step; returns whether this is the first
    /// complete list.
    fn apply(&mut self, event: Event<SshAccess>) -> bool {
        match &event {
            Event::Apply(access) => {
                self.forget(&ObjectKey::of(access));
                *self.counts.entry(Self::session_of(access)).or_default() += 1;
            }
            Event::Delete(access) => self.forget(&ObjectKey::of(access)),
            Event::Init | Event::InitApply(_) | Event::InitDone => {}
        }
        let list_done = matches!(event, Event::InitDone);
        let first_sync = apply_event(&mut self.sessions, event, Self::session_of);
        if list_done {
            self.counts.clear();
            for session in self.sessions.objects.values() {
                *self.counts.entry(session.clone()).or_default() += 1;
            }
        }
        first_sync
    }

    /// Removes the count of the session that SSHAccess `access` referred to so far.
    fn forget(&mut self, access: &ObjectKey) {
        let Some(session) = self.sessions.objects.get(access) else {
            return;
        };
        if let Some(count) = self.counts.get_mut(session) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(session);
            }
        }
    }
}

/// The caches behind admission decisions.
pub struct SessionCache {
    policy: SshPolicy,
    /// Session key -> whether it carries the enabling annotation.
    sessions: RwLock<WatchIndex<bool>>,
    accesses: RwLock<AccessIndex>,
    synced: watch::Sender<bool>,
}

impl SessionCache {
    /// Creates empty caches for `policy`. They fill once [`SessionCache::run`] runs.
    pub fn new(policy: SshPolicy) -> Self {
        let cache = Self {
            policy,
            sessions: RwLock::default(),
            accesses: RwLock::default(),
            synced: watch::Sender::new(false),
        };
        cache.update_synced();
        cache
    }

    /// Returns the policy the caches serve.
    pub fn policy(&self) -> SshPolicy {
        self.policy
    }

    /// Returns what the caches contain about session `name` in `namespace`.
    pub fn facts(&self, namespace: &str, name: &str) -> SessionFacts {
        let key = ObjectKey::new(namespace, name);
        let mut facts = SessionFacts::default();
        if self.policy.reads_sessions() {
            let sessions = self.sessions.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(annotated) = sessions.objects.get(&key) {
                facts.session_found = true;
                facts.annotated = *annotated;
            }
        }
        if self.policy.reads_ssh_accesses() {
            let accesses = self.accesses.read().unwrap_or_else(PoisonError::into_inner);
            facts.has_ssh_access = accesses.contains_session(&key);
        }
        facts
    }

    /// Returns whether every cache the policy needs has completed its first list.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits up to `timeout` for the first complete list of every cache; returns whether they
    /// synced.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut receiver = self.synced.subscribe();
        let synced = tokio::time::timeout(timeout, receiver.wait_for(|synced| *synced)).await;
        matches!(synced, Ok(Ok(_)))
    }

    fn update_synced(&self) {
        let sessions_synced = !self.policy.reads_sessions()
            || self
                .sessions
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .synced;
        let accesses_synced = !self.policy.reads_ssh_accesses()
            || self
                .accesses
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .sessions
                .synced;
        self.synced.send_if_modified(|synced| {
            let now = sessions_synced && accesses_synced;
            let changed = *synced != now;
            *synced = now;
            changed
        });
    }

    fn apply_session_event(&self, event: Event<PartialObjectMeta<AmaltheaSession>>) {
        let first_sync = {
            let mut sessions = self
                .sessions
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            apply_event(&mut sessions, event, |session| {
                has_enabled_annotation(session.annotations())
            })
        };
        if first_sync {
            tracing::info!("AmaltheaSession cache synced");
            self.update_synced();
        }
    }

    fn apply_access_event(&self, event: Event<SshAccess>) {
        let first_sync = {
            let mut accesses = self
                .accesses
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            accesses.apply(event)
        };
        if first_sync {
            tracing::info!("SSHAccess cache synced");
            self.update_synced();
        }
    }

    /// Runs the watches the policy needs, in `namespace` or in every namespace, until the future
    /// is dropped. Watch failures are logged and retried with backoff.
    pub async fn run(&self, client: Client, namespace: Option<String>) {
        let sessions = async {
            if !self.policy.reads_sessions() {
                return;
            }
            // An Api of PartialObjectMeta lists and watches metadata only.
            let api: Api<PartialObjectMeta<AmaltheaSession>> =
                scoped_api(&client, namespace.as_deref());
            let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => self.apply_session_event(event),
                    Err(error) => {
                        tracing::warn!(%error, "watch of AmaltheaSessions failed; retrying with backoff");
                    }
                }
            }
        };
        let accesses = async {
            if !self.policy.reads_ssh_accesses() {
                return;
            }
            let api: Api<SshAccess> = scoped_api(&client, namespace.as_deref());
            let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => self.apply_access_event(event),
                    Err(error) => {
                        tracing::warn!(%error, "watch of SSHAccesses failed; retrying with backoff");
                    }
                }
            }
        };
        tokio::join!(sessions, accesses);
    }
}

fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use api::ssh_access::SshAccessSpec;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::policy::ENABLED_ANNOTATION;

    fn session(namespace: &str, name: &str, annotated: bool) -> PartialObjectMeta<AmaltheaSession> {
        let annotations =
            annotated.then(|| BTreeMap::from([(ENABLED_ANNOTATION.to_owned(), "true".to_owned())]));
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some(name.to_owned()),
                annotations,
                ..Default::default()
            },
            _phantom: std::marker::PhantomData,
        }
    }

    fn access(namespace: &str, name: &str, session: &str) -> SshAccess {
        let spec: SshAccessSpec = serde_json::from_value(serde_json::json!({
            "sessionRef": { "name": session },
            "user": "subject",
        }))
        .expect("valid spec");
        let mut access = SshAccess::new(name, spec);
        access.metadata.namespace = Some(namespace.to_owned());
        access
    }

    #[test]
    fn annotated_policy_reads_both_caches() {
        let cache = SessionCache::new(SshPolicy::Annotated);
        assert!(!cache.is_synced());
        cache.apply_session_event(Event::Init);
        cache.apply_session_event(Event::InitApply(session("a", "one", true)));
        cache.apply_session_event(Event::InitApply(session("a", "two", false)));
        cache.apply_session_event(Event::InitDone);
        assert!(!cache.is_synced(), "the SSHAccess cache has not synced yet");
        cache.apply_access_event(Event::Init);
        cache.apply_access_event(Event::InitApply(access("a", "custom-name", "two")));
        cache.apply_access_event(Event::InitDone);
        assert!(cache.is_synced());

        let one = cache.facts("a", "one");
        assert!(one.session_found);
        assert!(one.annotated);
        assert!(!one.has_ssh_access);
        let two = cache.facts("a", "two");
        assert!(two.session_found);
        assert!(!two.annotated);
        assert!(two.has_ssh_access);
        let elsewhere = cache.facts("b", "two");
        assert_eq!(
            elsewhere,
            SessionFacts::default(),
            "namespaces are kept apart"
        );
    }

    #[test]
    fn events_update_and_delete() {
        let cache = SessionCache::new(SshPolicy::Annotated);
        cache.apply_session_event(Event::Apply(session("a", "one", false)));
        assert!(!cache.facts("a", "one").annotated);
        cache.apply_session_event(Event::Apply(session("a", "one", true)));
        assert!(cache.facts("a", "one").annotated);
        cache.apply_session_event(Event::Delete(session("a", "one", true)));
        assert!(!cache.facts("a", "one").session_found);

        cache.apply_access_event(Event::Apply(access("a", "x", "one")));
        assert!(cache.facts("a", "one").has_ssh_access);
        cache.apply_access_event(Event::Delete(access("a", "x", "one")));
        assert!(!cache.facts("a", "one").has_ssh_access);
    }

    #[test]
    fn access_counts_follow_session_changes() {
        let cache = SessionCache::new(SshPolicy::Explicit);
        cache.apply_access_event(Event::Apply(access("a", "x", "one")));
        cache.apply_access_event(Event::Apply(access("a", "y", "one")));
        cache.apply_access_event(Event::Apply(access("a", "x", "two")));
        assert!(
            cache.facts("a", "one").has_ssh_access,
            "y still refers to one"
        );
        assert!(cache.facts("a", "two").has_ssh_access);
        cache.apply_access_event(Event::Delete(access("a", "y", "one")));
        assert!(!cache.facts("a", "one").has_ssh_access);
        cache.apply_access_event(Event::Apply(access("a", "x", "two")));
        cache.apply_access_event(Event::Delete(access("a", "x", "two")));
        assert!(!cache.facts("a", "two").has_ssh_access);
    }

    #[test]
    fn relist_replaces_objects_at_init_done() {
        let cache = SessionCache::new(SshPolicy::Explicit);
        cache.apply_access_event(Event::Apply(access("a", "old", "gone")));
        cache.apply_access_event(Event::Init);
        cache.apply_access_event(Event::InitApply(access("a", "new", "kept")));
        assert!(
            cache.facts("a", "gone").has_ssh_access,
            "old list serves until InitDone"
        );
        cache.apply_access_event(Event::InitDone);
        assert!(!cache.facts("a", "gone").has_ssh_access);
        assert!(cache.facts("a", "kept").has_ssh_access);
    }

    #[test]
    fn policy_all_is_synced_without_watches() {
        let cache = SessionCache::new(SshPolicy::All);
        assert!(cache.is_synced());
    }

    #[tokio::test]
    async fn wait_synced_times_out_then_succeeds() {
        let cache = SessionCache::new(SshPolicy::Explicit);
        assert!(!cache.wait_synced(Duration::from_millis(20)).await);
        cache.apply_access_event(Event::Init);
        cache.apply_access_event(Event::InitDone);
        assert!(cache.wait_synced(Duration::from_millis(20)).await);
    }
}
