//! The SSHAccess controller: for each SSHAccess, the keys Secret, the host key Secret, the
//! Service, the NetworkPolicy and the status.
//!
//! A reconcile runs these steps, each in its own module: [`validate`] the object, [`read`] the
//! session, pod and key sources, ensure the [`hostkey`], merge the keys ([`validate`]),
//! [`build`] the desired children, [`apply`] them, and write the [`status`].

pub mod apply;
pub mod build;
pub mod hostkey;
pub mod read;
pub mod status;
pub mod validate;
pub mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::condition::{KEYS_SYNCED, READY, SIDECAR_INJECTED};
use api::ssh_access::SshAccessStatus;
use api::{AmaltheaSession, SshAccess};
use futures::channel::mpsc::UnboundedReceiver;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::hostkey::HostKey;
use self::read::SourceKind;
use self::status::{StatusInput, reason};
use self::validate::{KeyOutcome, PreviousKeys};
use crate::ca::CertificateAuthority;
use crate::config::Config;
use crate::error::{Categorized, ErrorCategory};
use crate::events::{self, EventPublisher};
use crate::metrics::{ControllerName, Metrics};
use crate::names::{FIELD_MANAGER, MANAGED_BY_LABEL};
use crate::userprefs::UserKeyRegistry;
use crate::{drive_controller, scoped_api, signal_synced};

/// Retry interval while another SSHAccess owns the session's children.
const CONFLICT_RETRY: Duration = Duration::from_secs(60);
/// Retry interval while a Secret key source cannot be read.
const SOURCE_RETRY: Duration = Duration::from_secs(60);
/// First retry interval after a failed reconcile; it doubles up to [`MAX_ERROR_RETRY`].
const FIRST_ERROR_RETRY: Duration = Duration::from_secs(2);
/// Maximum retry interval after failed reconciles.
const MAX_ERROR_RETRY: Duration = Duration::from_secs(300);

/// Shared state of the SSHAccess controller.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Operator configuration.
    pub config: Arc<Config>,
    /// The gateway's certificate authority.
    pub ca: CertificateAuthority,
    /// Event publisher.
    pub events: EventPublisher,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The user-preferences key cache, when the source is configured.
    pub user_keys: Option<Arc<UserKeyRegistry>>,
    /// Consecutive failures per object, for the retry backoff.
    pub failures: Mutex<HashMap<ObjectRef<SshAccess>, u32>>,
}

/// A failed reconcile; the controller retries it with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading the session, pod or keys Secret failed.
    #[error(transparent)]
    Read(#[from] read::ReadError),
    /// Creating or reading the host key failed.
    #[error(transparent)]
    HostKey(#[from] hostkey::HostKeyError),
    /// Applying a child failed.
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    /// Writing the status failed.
    #[error(transparent)]
    Status(#[from] status::StatusError),
}

impl Categorized for ReconcileError {
    fn category(&self) -> ErrorCategory {
        match self {
            Self::Read(error) => error.category(),
            Self::HostKey(error) => error.category(),
            Self::Apply(error) => error.category(),
            Self::Status(error) => error.category(),
        }
    }
}

/// Reconciles one SSHAccess and records the outcome in the metrics.
pub async fn reconcile(
    access: Arc<SshAccess>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let span = tracing::info_span!(
        "reconcile_sshaccess",
        namespace = access.namespace().unwrap_or_default(),
        name = access.name_any()
    );
    async move {
        let started = Instant::now();
        let result = reconcile_access(&access, &ctx).await;
        let category = result.as_ref().err().map(Categorized::category);
        ctx.metrics
            .observe_reconcile(ControllerName::SshAccess, category, started.elapsed());
        if result.is_ok() {
            lock(&ctx.failures).remove(&ObjectRef::from_obj(access.as_ref()));
        }
        result
    }
    .instrument(span)
    .await
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

async fn reconcile_access(access: &SshAccess, ctx: &Context) -> Result<Action, ReconcileError> {
    let now = Timestamp::now();
    let previous = access.status.as_ref();
    let valid = match validate::check(access) {
        Ok(valid) => valid,
        Err(error) => {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "SSHAccess is invalid"
            );
            report_blocked(ctx, access, reason::INVALID_SPEC, error.to_string(), now).await?;
            return Ok(Action::await_change());
        }
    };
    let expired = validate::expired_at(access, now);
    let observed = read::observe(
        &ctx.client,
        ctx.user_keys.as_ref(),
        access,
        &valid,
        expired.is_some(),
    )
    .await?;
    if let Some(other) = observed
        .keys_secret
        .as_ref()
        .and_then(|secret| hostkey::other_controller(access, secret))
    {
        let message = format!(
            "Secret {} belongs to {other}, which already serves session {}: delete one of the \
             two SSHAccess objects",
            valid.names.keys_secret, valid.names.session
        );
        report_blocked(ctx, access, reason::CONFLICT, message, now).await?;
        return Ok(Action::requeue(CONFLICT_RETRY));
    }
    let host_key = hostkey::ensure(&ctx.client, access, &valid).await?;
    if let HostKey::OwnedByOther(message) = &host_key {
        report_blocked(ctx, access, reason::CONFLICT, message.clone(), now).await?;
        return Ok(Action::requeue(CONFLICT_RETRY));
    }

    let keys = match expired {
        Some(at) => validate::expired_keys(at),
        None => {
            let previous_keys = PreviousKeys {
                status: previous,
                authorized_keys: observed.current_authorized_keys(),
            };
            validate::merge_keys(&observed.sources, previous_keys, &ctx.config.key_policy)
        }
    };
    let desired = build::desired(
        &valid,
        &keys.authorized_keys,
        &ctx.ca.trusted_user_ca_keys(),
        &ctx.config.gateway,
    );
    apply::apply_all(&ctx.client, &desired).await?;
    if observed.current_authorized_keys() != Some(keys.authorized_keys.as_str()) {
        ctx.metrics.count_key_update();
        tracing::info!(secret = %valid.names.keys_secret, accepted = keys.accepted.len(),
            rejected = keys.rejected_total, "wrote authorized_keys");
    }

    let new_status = status::build(&StatusInput {
        generation: access.metadata.generation,
        previous,
        session_name: &valid.names.session,
        gateway: &ctx.config.gateway,
        now,
        keys: &keys,
        session: observed.session.as_ref(),
        pod: observed.pod.as_ref(),
        host_key: &host_key,
    });
    status::write(
        &ctx.client,
        access,
        &valid.namespace,
        &valid.name,
        &new_status,
    )
    .await?;
    publish_events(ctx, access, previous, &new_status, &keys, &host_key).await;
    record_key_metrics(ctx, &valid.namespace, &valid.name, &keys);
    Ok(next_action(access, &keys, now))
}

/// Writes the status of an SSHAccess the operator does not serve and publishes an Event when
/// the reason is new.
async fn report_blocked(
    ctx: &Context,
    access: &SshAccess,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Result<(), ReconcileError> {
    let previous = access.status.as_ref();
    let new_status = status::build_blocked(
        access.metadata.generation,
        previous,
        reason,
        message.clone(),
        now,
    );
    let (Some(namespace), Some(name)) = (access.namespace(), access.metadata.name.clone()) else {
        return Ok(());
    };
    status::write(&ctx.client, access, &namespace, &name, &new_status).await?;
    let was = status::find(previous, READY).map(|condition| condition.reason.as_str());
    if was != Some(reason) {
        let event_reason = if reason == reason::CONFLICT {
            events::reason::CONFLICT
        } else {
            events::reason::INVALID_SPEC
        };
        ctx.events
            .warn(&access.object_ref(&()), event_reason, "Reconcile", &message)
            .await;
    }
    Ok(())
}

/// Publishes an Event for each user-actionable problem that is new since the last status.
async fn publish_events(
    ctx: &Context,
    access: &SshAccess,
    previous: Option<&SshAccessStatus>,
    current: &SshAccessStatus,
    keys: &KeyOutcome,
    host_key: &HostKey,
) {
    let object = access.object_ref(&());
    let old_rejected = previous
        .map(|status| status.rejected_keys.as_slice())
        .unwrap_or_default();
    if !current.rejected_keys.is_empty() && current.rejected_keys != old_rejected {
        let first = &current.rejected_keys[0];
        let mut note = format!(
            "{} key line(s) rejected; first: {} line {}: {}",
            keys.rejected_total, first.source, first.line, first.reason
        );
        if keys.rejected_total > 1 {
            note.push_str(" (see status.rejectedKeys for the others)");
        }
        ctx.events
            .warn(&object, events::reason::KEYS_REJECTED, "SyncKeys", &note)
            .await;
    }
    if let Some(condition) =
        newly_reported(current, previous, KEYS_SYNCED, reason::SOURCE_UNAVAILABLE)
    {
        ctx.events
            .warn(
                &object,
                events::reason::SOURCE_UNAVAILABLE,
                "SyncKeys",
                &condition.message,
            )
            .await;
    }
    if let Some(condition) =
        newly_reported(current, previous, SIDECAR_INJECTED, reason::NOT_INJECTED)
    {
        ctx.events
            .warn(
                &object,
                events::reason::SIDECAR_MISSING,
                "CheckSidecar",
                &condition.message,
            )
            .await;
    }
    if let HostKey::Invalid(message) = host_key
        && newly_reported(current, previous, READY, reason::HOST_KEY_INVALID).is_some()
    {
        ctx.events
            .warn(
                &object,
                events::reason::HOST_KEY_INVALID,
                "ReadHostKey",
                message,
            )
            .await;
    }
}

/// Returns the condition `type_` of `current` when it has `reason` and the previous status had
/// no such condition with the same reason and message.
fn newly_reported<'a>(
    current: &'a SshAccessStatus,
    previous: Option<&SshAccessStatus>,
    type_: &str,
    reason: &str,
) -> Option<&'a Condition> {
    let now = status::find(Some(current), type_).filter(|condition| condition.reason == reason)?;
    let before = status::find(previous, type_);
    let unchanged = before.is_some_and(|b| b.reason == now.reason && b.message == now.message);
    (!unchanged).then_some(now)
}

fn record_key_metrics(ctx: &Context, namespace: &str, name: &str, keys: &KeyOutcome) {
    let failing = |kind: SourceKind| keys.failing.iter().filter(|f| f.kind == kind).count();
    ctx.metrics.set_object_keys(
        &format!("{namespace}/{name}"),
        keys.accepted.len(),
        failing(SourceKind::Secret),
        failing(SourceKind::UserPreferences),
    );
}

/// Chooses when to reconcile again without a watch event: at the expiry time, or soon while a
/// Secret source fails. User-preferences sources have their own poller.
fn next_action(access: &SshAccess, keys: &KeyOutcome, now: Timestamp) -> Action {
    let until_expiry = access
        .spec
        .expires_at
        .as_ref()
        .filter(|_| keys.expired_at.is_none())
        .and_then(|expiry| Duration::try_from(expiry.0.duration_since(now)).ok())
        .map(|wait| wait + Duration::from_millis(500));
    let source_retry = keys
        .failing
        .iter()
        .any(|failing| failing.kind == SourceKind::Secret)
        .then_some(SOURCE_RETRY);
    match until_expiry.into_iter().chain(source_retry).min() {
        Some(wait) => Action::requeue(wait),
        None => Action::await_change(),
    }
}

/// Logs a failed reconcile and schedules a retry with exponential backoff.
pub fn error_policy(access: Arc<SshAccess>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(access.as_ref());
    let attempts = {
        let mut failures = lock(&ctx.failures);
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let wait = FIRST_ERROR_RETRY
        .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(16)))
        .min(MAX_ERROR_RETRY);
    tracing::warn!(
        namespace = access.namespace().unwrap_or_default(),
        name = access.name_any(),
        category = error.category().as_str(),
        attempts,
        retry_in = ?wait,
        error = error as &dyn std::error::Error,
        "SSHAccess reconcile failed"
    );
    Action::requeue(wait)
}

/// Runs the SSHAccess controller until `shutdown` fires. `writer` fills the cache that
/// `reader` (shared with the session controller and the user-preferences cache) reads.
pub async fn run(
    ctx: Arc<Context>,
    reader: Store<SshAccess>,
    writer: Writer<SshAccess>,
    user_keys_changed: Option<UnboundedReceiver<ObjectRef<SshAccess>>>,
    synced: CancellationToken,
    shutdown: CancellationToken,
) {
    let client = ctx.client.clone();
    let namespace = ctx.config.namespace.as_deref();
    let operator_made = format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}");
    let metrics = Arc::clone(&ctx.metrics);
    let user_keys = ctx.user_keys.clone();

    let primary = watcher(
        scoped_api::<SshAccess>(&client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|access| access.managed_fields_mut().clear())
    .reflect(writer);
    let primary = signal_synced(primary, synced.clone())
        // NOTE: a deletion missed while the watch was disconnected arrives as a relist, not as a
        // Delete event, so its per-object metric figures stay until the operator restarts.
        .inspect_ok(move |event| {
            if let watcher::Event::Delete(access) = event {
                metrics.forget_object(&format!(
                    "{}/{}",
                    access.namespace().unwrap_or_default(),
                    access.name_any()
                ));
                if let Some(user_keys) = &user_keys {
                    user_keys.unsubscribe(&ObjectRef::from_obj(access));
                }
            }
        })
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());

    let secrets = watcher(
        scoped_api::<PartialObjectMeta<Secret>>(&client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    let services = watcher(
        scoped_api::<PartialObjectMeta<Service>>(&client, namespace),
        watcher::Config::default().labels(&operator_made),
    )
    .default_backoff()
    .touched_objects();
    let network_policies = watcher(
        scoped_api::<PartialObjectMeta<NetworkPolicy>>(&client, namespace),
        watcher::Config::default().labels(&operator_made),
    )
    .default_backoff()
    .touched_objects();
    let sessions = watcher(
        scoped_api::<PartialObjectMeta<AmaltheaSession>>(&client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects()
    // Only spec changes (hibernation) matter; pod events report everything else.
    .predicate_filter(predicates::generation, Default::default());
    let session_pods = format!(
        "{}={}",
        api::amalthea::NAME_LABEL,
        api::amalthea::NAME_LABEL_VALUE
    );
    let pods = watcher(
        scoped_api::<PartialObjectMeta<Pod>>(&client, namespace),
        watcher::Config::default().labels(&session_pods),
    )
    .default_backoff()
    .touched_objects();

    let secret_reader = reader.clone();
    let session_reader = reader.clone();
    let pod_reader = reader.clone();
    let mut controller = Controller::for_stream(primary, reader)
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
        .watches_stream(secrets, move |secret| {
            watch::secret_to_accesses(&secret_reader, &secret)
        })
        .owns_stream(services)
        .owns_stream(network_policies)
        .watches_stream(sessions, move |session| {
            watch::session_to_accesses(&session_reader, session.namespace(), &session.name_any())
        })
        .watches_stream(pods, move |pod| watch::pod_to_accesses(&pod_reader, &pod));
    if let Some(trigger) = user_keys_changed {
        controller = controller.reconcile_on(trigger);
    }
    let controller = controller
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                log_controller_error(&error);
            }
        });
    drive_controller(controller, &synced, &shutdown).await;
    tracing::info!("SSHAccess controller stopped");
}

fn log_controller_error<E: std::error::Error + 'static, Q: std::error::Error + 'static>(
    error: &controller::Error<E, Q>,
) {
    match error {
        // Already logged with its object by the error policy.
        controller::Error::ReconcilerFailed(..) => {}
        controller::Error::ObjectNotFound(object) => {
            tracing::debug!(%object, "object left the cache before its reconcile");
        }
        other => tracing::warn!(error = other as &dyn std::error::Error, "controller error"),
    }
}
