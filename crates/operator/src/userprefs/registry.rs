//! Per-user cache of user-preferences keys.
//!
//! Each user whose keys an SSHAccess reads has one entry, shared by all of that user's
//! SSHAccess objects: the first reconcile fetches the keys, then a task polls them every
//! interval with `If-None-Match`. When the keys or the error change, every subscribed SSHAccess
//! is sent to the controller for a reconcile. A failed fetch keeps the last good keys. The
//! poller stops once no SSHAccess in the controller's cache uses the user's keys any more.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::SshAccess;
use futures::channel::mpsc;
use kube::runtime::reflector::{ObjectRef, Store};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::client::{FetchError, Fetched, UserPreferencesClient};
use crate::metrics::Metrics;

/// Keys and error of one user, as a reconcile reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The last good key lines, in response order; `None` before the first successful fetch.
    pub keys: Option<Vec<String>>,
    /// The error of the latest fetch, if it failed.
    pub error: Option<FetchError>,
}

/// Result of a refresh requested through the admin route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshOutcome {
    /// Whether the keys or the error changed.
    pub changed: bool,
    /// Number of SSHAccess objects queued for a reconcile.
    pub subscribers: usize,
    /// The user's keys and error after the refresh.
    pub snapshot: Snapshot,
}

/// A refresh that could not run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// No SSHAccess reads this user's keys.
    #[error("no SSHAccess managed by this operator reads the keys of user {0:?}")]
    UnknownUser(String),
}

#[derive(Default)]
struct UserState {
    fetched: bool,
    keys: Option<Vec<String>>,
    etag: Option<String>,
    error: Option<FetchError>,
}

impl UserState {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            keys: self.keys.clone(),
            error: self.error.clone(),
        }
    }
}

struct UserEntry {
    user: String,
    state: tokio::sync::Mutex<UserState>,
    subscribers: Mutex<HashSet<ObjectRef<SshAccess>>>,
}

/// The per-user cache; one per leadership term.
pub struct UserKeyRegistry {
    client: Arc<UserPreferencesClient>,
    poll_interval: Duration,
    users: Mutex<HashMap<String, Arc<UserEntry>>>,
    subscriptions: Mutex<HashMap<ObjectRef<SshAccess>, String>>,
    trigger: mpsc::UnboundedSender<ObjectRef<SshAccess>>,
    store: Store<SshAccess>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl UserKeyRegistry {
    /// Creates the registry. The receiver yields the SSHAccess objects to reconcile after a
    /// change; pollers stop when `stop` fires.
    pub fn new(
        client: Arc<UserPreferencesClient>,
        poll_interval: Duration,
        store: Store<SshAccess>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<ObjectRef<SshAccess>>) {
        let (trigger, receiver) = mpsc::unbounded();
        let registry = Arc::new(Self {
            client,
            poll_interval,
            users: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
            trigger,
            store,
            metrics,
            stop,
        });
        (registry, receiver)
    }

    /// Returns `user`'s keys for `subscriber`, fetching them now on first use, and keeps the
    /// subscriber informed of later changes.
    pub async fn keys_for(
        self: &Arc<Self>,
        subscriber: ObjectRef<SshAccess>,
        user: &str,
    ) -> Snapshot {
        let entry = self.subscribe(subscriber, user);
        let mut state = entry.state.lock().await;
        if !state.fetched {
            self.fetch(&entry.user, &mut state).await;
            drop(state);
            self.spawn_poller(Arc::clone(&entry));
            return entry.state.lock().await.snapshot();
        }
        state.snapshot()
    }

    /// Stops informing `subscriber`, whose spec no longer reads user-preferences keys.
    pub fn unsubscribe(&self, subscriber: &ObjectRef<SshAccess>) {
        let Some(user) = lock(&self.subscriptions).remove(subscriber) else {
            return;
        };
        if let Some(entry) = lock(&self.users).get(&user) {
            lock(&entry.subscribers).remove(subscriber);
        }
    }

    /// Fetches `user`'s keys now and queues the subscribers for a reconcile when they changed.
    pub async fn refresh(&self, user: &str) -> Result<RefreshOutcome, RefreshError> {
        let entry = lock(&self.users)
            .get(user)
            .cloned()
            .ok_or_else(|| RefreshError::UnknownUser(user.to_owned()))?;
        let mut state = entry.state.lock().await;
        let changed = self.fetch(user, &mut state).await;
        let snapshot = state.snapshot();
        drop(state);
        let subscribers = if changed { self.notify(&entry) } else { 0 };
        tracing::info!(%user, changed, subscribers, "refreshed user-preferences keys on request");
        Ok(RefreshOutcome {
            changed,
            subscribers,
            snapshot,
        })
    }

    fn subscribe(&self, subscriber: ObjectRef<SshAccess>, user: &str) -> Arc<UserEntry> {
        let previous = lock(&self.subscriptions).insert(subscriber.clone(), user.to_owned());
        let mut users = lock(&self.users);
        if let Some(previous) = previous.filter(|previous| previous != user)
            && let Some(entry) = users.get(&previous)
        {
            lock(&entry.subscribers).remove(&subscriber);
        }
        let entry = users.entry(user.to_owned()).or_insert_with(|| {
            Arc::new(UserEntry {
                user: user.to_owned(),
                state: tokio::sync::Mutex::new(UserState::default()),
                subscribers: Mutex::new(HashSet::new()),
            })
        });
        lock(&entry.subscribers).insert(subscriber);
        Arc::clone(entry)
    }

    /// Fetches once and updates `state`. Returns whether the keys or the error changed.
    async fn fetch(&self, user: &str, state: &mut UserState) -> bool {
        let etag = if state.keys.is_some() {
            state.etag.clone()
        } else {
            None
        };
        let result = self.client.fetch(user, etag.as_deref()).await;
        state.fetched = true;
        let before = state.snapshot();
        match result {
            Ok(Fetched::Keys { keys, etag }) => {
                self.metrics.count_user_preferences_request("ok");
                state.keys = Some(keys.into_iter().map(|key| key.public_key).collect());
                state.etag = etag;
                state.error = None;
            }
            Ok(Fetched::NotModified) => {
                self.metrics.count_user_preferences_request("not_modified");
                state.error = None;
            }
            Ok(Fetched::NoKeys) => {
                self.metrics.count_user_preferences_request("not_found");
                state.keys = Some(Vec::new());
                state.etag = None;
                state.error = None;
            }
            Err(error) => {
                self.metrics.count_user_preferences_request(error.outcome());
                if state.error.as_ref() != Some(&error) {
                    tracing::warn!(%user, error = &error as &dyn std::error::Error,
                        "failed to fetch user-preferences keys; keeping the last good keys");
                }
                state.error = Some(error);
            }
        }
        state.snapshot() != before
    }

    /// Queues every live subscriber of `entry` for a reconcile and returns how many.
    fn notify(&self, entry: &UserEntry) -> usize {
        let subscribers: Vec<_> = lock(&entry.subscribers).iter().cloned().collect();
        for subscriber in &subscribers {
            // The receiver is gone only when the controller stopped, and then nothing is left
            // to notify.
            let _ = self.trigger.unbounded_send(subscriber.clone());
        }
        subscribers.len()
    }

    /// Removes subscribers that left the cache or no longer read this user's keys, and returns
    /// whether any remain.
    fn prune(&self, entry: &UserEntry) -> bool {
        let mut subscribers = lock(&entry.subscribers);
        let mut removed = Vec::new();
        subscribers.retain(|subscriber| {
            let live = self.store.get(subscriber).is_some_and(|access| {
                access.spec.user == entry.user
                    && access
                        .spec
                        .keys_from
                        .iter()
                        .any(|source| source.user_preferences.is_some())
            });
            if !live {
                removed.push(subscriber.clone());
            }
            live
        });
        let mut subscriptions = lock(&self.subscriptions);
        for subscriber in removed {
            if subscriptions.get(&subscriber) == Some(&entry.user) {
                subscriptions.remove(&subscriber);
            }
        }
        !subscribers.is_empty()
    }

    fn spawn_poller(self: &Arc<Self>, entry: Arc<UserEntry>) {
        let registry = Arc::clone(self);
        tokio::spawn(async move {
            // The first poll is spread over the interval, so that users added together (for
            // example after a restart) are not all polled in the same second.
            let mut delay = registry
                .poll_interval
                .mul_f64(rand::thread_rng().gen_range(0.5..1.0));
            loop {
                tokio::select! {
                    () = registry.stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = registry.poll_interval;
                if !registry.prune(&entry) && registry.remove_if_unused(&entry) {
                    tracing::debug!(user = %entry.user, "no SSHAccess reads this user's keys; polling stopped");
                    return;
                }
                let mut state = entry.state.lock().await;
                let changed = registry.fetch(&entry.user, &mut state).await;
                drop(state);
                if changed {
                    let subscribers = registry.notify(&entry);
                    tracing::info!(user = %entry.user, subscribers, "user-preferences keys changed");
                }
            }
        });
    }

    /// Removes `entry` when it still has no subscribers, holding the users lock so that a
    /// concurrent subscribe either lands before the check or creates a new entry.
    fn remove_if_unused(&self, entry: &Arc<UserEntry>) -> bool {
        let mut users = lock(&self.users);
        if !lock(&entry.subscribers).is_empty() {
            return false;
        }
        if users
            .get(&entry.user)
            .is_some_and(|current| Arc::ptr_eq(current, entry))
        {
            users.remove(&entry.user);
        }
        true
    }
}
