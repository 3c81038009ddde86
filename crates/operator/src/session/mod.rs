//! The AmaltheaSession controller: one SSHAccess, named like the session and owned by it, for
//! every session that the SSH policy enables.
//!
//! It watches session metadata only (labels and annotations decide everything) and reads the
//! existing SSHAccess objects from the cache that the SSHAccess controller fills, so a
//! reconcile of an unchanged session sends no request.

pub mod build;

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use api::{AmaltheaSession, SshAccess};
use futures::{Stream, StreamExt, TryStreamExt, future};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::build::Decision;
use crate::config::SshPolicy;
use crate::error::{Categorized, ErrorCategory};
use crate::events::{self, EventPublisher};
use crate::metrics::{ControllerName, Metrics};
use crate::names::{FIELD_MANAGER, MANAGED_BY_LABEL, SAFE_USERNAME_LABEL};
use crate::{drive_controller, scoped_api, signal_synced};

/// Retry interval after a failed reconcile.
const ERROR_RETRY: Duration = Duration::from_secs(10);

/// Shared state of the session controller.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// SSH policy that selects the sessions.
    pub policy: SshPolicy,
    /// Whether operator-made SSHAccess objects read the owner's user-preferences keys.
    pub user_preferences: bool,
    /// Cache of SSHAccess objects, filled by the SSHAccess controller.
    pub accesses: Store<SshAccess>,
    /// Event publisher.
    pub events: EventPublisher,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// A failed request for an SSHAccess.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading, applying or deleting the SSHAccess failed.
    #[error("failed to {action} SSHAccess {namespace}/{name}: {source}")]
    Kubernetes {
        /// Attempted operation: read, apply or delete.
        action: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl Categorized for SessionError {
    fn category(&self) -> ErrorCategory {
        match self {
            Self::Kubernetes {
                source: kube::Error::Api(status),
                ..
            } if status.code == 409 => ErrorCategory::Conflict,
            Self::Kubernetes { .. } => ErrorCategory::Kubernetes,
        }
    }
}

/// Reconciles one session and records the outcome in the metrics.
pub async fn reconcile(
    session: Arc<PartialObjectMeta<AmaltheaSession>>,
    ctx: Arc<Context>,
) -> Result<Action, SessionError> {
    let span = tracing::info_span!(
        "reconcile_session",
        namespace = session.namespace().unwrap_or_default(),
        name = session.name_any()
    );
    async move {
        let started = Instant::now();
        let result = reconcile_session(&session, &ctx).await;
        let category = result.as_ref().err().map(Categorized::category);
        ctx.metrics
            .observe_reconcile(ControllerName::Session, category, started.elapsed());
        result
    }
    .instrument(span)
    .await
}

async fn reconcile_session(
    session: &PartialObjectMeta<AmaltheaSession>,
    ctx: &Context,
) -> Result<Action, SessionError> {
    let (Some(namespace), Some(name), Some(uid)) = (
        session.namespace(),
        session.metadata.name.clone(),
        session.metadata.uid.clone(),
    ) else {
        return Ok(Action::await_change());
    };
    let api = Api::<SshAccess>::namespaced(ctx.client.clone(), &namespace);
    let error = |action: &'static str| {
        let (namespace, name) = (namespace.clone(), name.clone());
        move |source| SessionError::Kubernetes {
            action,
            namespace,
            name,
            source,
        }
    };
    let cached = ctx.accesses.get(&ObjectRef::new(&name).within(&namespace));
    match build::decide(&session.metadata, ctx.policy) {
        Decision::Keep { user } => {
            // The cache may lag behind a hand-made object, so an absent entry is confirmed
            // with a read before anything is written.
            let existing = match cached {
                Some(cached) => Some(cached.as_ref().clone()),
                None => api.get_opt(&name).await.map_err(error("read"))?,
            };
            if let Some(existing) = &existing {
                if !build::is_operator_made(existing, &uid) {
                    tracing::debug!(
                        "an SSHAccess of the same name exists and was not made by the operator; leaving it"
                    );
                    return Ok(Action::await_change());
                }
                if build::is_up_to_date(existing, &user, ctx.user_preferences) {
                    return Ok(Action::await_change());
                }
            }
            let Some(body) = build::access_body(session, &user, ctx.user_preferences) else {
                return Ok(Action::await_change());
            };
            // Forcing is right only over the operator's own object. On a create, a conflict
            // means that a person created one at the same moment, and theirs wins.
            let mut params = PatchParams::apply(FIELD_MANAGER);
            params.force = existing.is_some();
            api.patch(&name, &params, &Patch::Apply(&body))
                .await
                .map_err(error("apply"))?;
            tracing::info!(%user, "applied SSHAccess for session");
        }
        Decision::Remove => {
            if let Some(cached) = cached
                && build::is_operator_made(&cached, &uid)
            {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: cached.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match api.delete(&name, &params).await {
                    Ok(_) => tracing::info!("deleted SSHAccess of a session without SSH"),
                    Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                    Err(source) => return Err(error("delete")(source)),
                }
            }
        }
        Decision::MissingUser => {
            let note = format!(
                "SSH is enabled for session {name}, but it has no {SAFE_USERNAME_LABEL} label \
                 naming its owner, so no SSHAccess was created: add the label with the owner's \
                 user id"
            );
            ctx.events
                .warn(
                    &session.object_ref(&()),
                    events::reason::MISSING_SAFE_USERNAME,
                    "CreateSSHAccess",
                    &note,
                )
                .await;
        }
    }
    Ok(Action::await_change())
}

/// Logs a failed reconcile and schedules a retry.
pub fn error_policy(
    session: Arc<PartialObjectMeta<AmaltheaSession>>,
    error: &SessionError,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(
        namespace = session.namespace().unwrap_or_default(),
        name = session.name_any(),
        category = error.category().as_str(),
        error = error as &dyn std::error::Error,
        "session reconcile failed"
    );
    Action::requeue(ERROR_RETRY)
}

/// Hashes labels and annotations, the only session fields this controller reads.
fn labels_and_annotations(session: &PartialObjectMeta<AmaltheaSession>) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    session.metadata.labels.hash(&mut hasher);
    session.metadata.annotations.hash(&mut hasher);
    Some(hasher.finish())
}

/// Passes on an owned SSHAccess when it is new, when its `metadata.generation` changed, or when
/// it was deleted (so that the operator recreates it). Status writes, the bulk of the events,
/// are dropped: they never change what this controller decides.
fn spec_changes_and_deletions(
    events: impl Stream<Item = Result<watcher::Event<PartialObjectMeta<SshAccess>>, watcher::Error>>,
) -> impl Stream<Item = Result<PartialObjectMeta<SshAccess>, watcher::Error>> {
    let mut generations: HashMap<String, Option<i64>> = HashMap::new();
    events.try_filter_map(move |event| {
        let passed = match event {
            watcher::Event::Delete(access) => {
                generations.remove(&access.uid().unwrap_or_default());
                Some(access)
            }
            watcher::Event::Apply(access) | watcher::Event::InitApply(access) => {
                let uid = access.uid().unwrap_or_default();
                let generation = access.metadata.generation;
                let unchanged = generations.insert(uid, generation) == Some(generation);
                (!unchanged).then_some(access)
            }
            watcher::Event::Init | watcher::Event::InitDone => None,
        };
        future::ready(Ok(passed))
    })
}

/// The cache-complete signals the session controller uses.
pub struct Sync {
    /// Fired by the SSHAccess controller once its cache contains the full list.
    pub accesses: CancellationToken,
    /// Fired here once the cache of sessions contains the full list.
    pub sessions: CancellationToken,
}

/// Runs the session controller until `shutdown` fires. It starts once the SSHAccess cache is
/// complete, so it never mistakes a missing cache entry for a missing object.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    sync: Sync,
    shutdown: CancellationToken,
) {
    tokio::select! {
        () = shutdown.cancelled() => return,
        () = sync.accesses.cancelled() => {}
    }
    let client = ctx.client.clone();
    let sessions = scoped_api::<PartialObjectMeta<AmaltheaSession>>(&client, namespace.as_deref());
    let (reader, writer) = reflector::store();
    let stream = watcher(sessions, watcher::Config::default())
        .default_backoff()
        .modify(|session| session.managed_fields_mut().clear())
        .reflect(writer);
    let stream = signal_synced(stream, sync.sessions.clone())
        .applied_objects()
        .predicate_filter(labels_and_annotations, Default::default());
    let operator_made = format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}");
    let owned = spec_changes_and_deletions(
        watcher(
            scoped_api::<PartialObjectMeta<SshAccess>>(&client, namespace.as_deref()),
            watcher::Config::default().labels(&operator_made),
        )
        .default_backoff(),
    );
    let controller = Controller::for_stream(stream, reader)
        .with_config(controller::Config::default().concurrency(concurrency))
        .owns_stream(owned)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result
                && !matches!(error, controller::Error::ReconcilerFailed(..))
            {
                tracing::debug!(
                    error = &error as &dyn std::error::Error,
                    "session controller event"
                );
            }
        });
    drive_controller(controller, &sync.sessions, &shutdown).await;
    tracing::info!("session controller stopped");
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use kube::api::ObjectMeta;
    use kube::core::PartialObjectMetaExt;

    use super::*;

    fn access(uid: &str, generation: i64) -> PartialObjectMeta<SshAccess> {
        ObjectMeta {
            name: Some(format!("access-{uid}")),
            uid: Some(uid.to_owned()),
            generation: Some(generation),
            ..ObjectMeta::default()
        }
        .into_response_partial::<SshAccess>()
    }

    #[tokio::test]
    async fn owned_stream_drops_status_only_events() {
        let events = vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(access("a", 1))),
            Ok(watcher::Event::InitDone),
            // A status write changes the resource version but not the generation.
            Ok(watcher::Event::Apply(access("a", 1))),
            Ok(watcher::Event::Apply(access("a", 2))),
            Ok(watcher::Event::Apply(access("b", 1))),
            Ok(watcher::Event::Delete(access("a", 2))),
            // After a deletion the same generation counts as new again.
            Ok(watcher::Event::Apply(access("a", 2))),
        ];

        let passed: Vec<(String, Option<i64>)> = spec_changes_and_deletions(stream::iter(events))
            .map_ok(|access| (access.uid().unwrap_or_default(), access.metadata.generation))
            .try_collect()
            .await
            .expect("no watch errors");

        let expected = [("a", 1), ("a", 2), ("b", 1), ("a", 2), ("a", 2)]
            .map(|(uid, generation)| (uid.to_owned(), Some(generation)));
        assert_eq!(passed, expected);
    }
}
