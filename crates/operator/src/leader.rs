//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several replicas only
//! one runs the controllers.
//!
//! The rules follow client-go's `k8s.io/client-go/tools/leaderelection` package. A replica
//! takes the Lease when it has no holder, or when its holder has not renewed it for
//! `leaseDurationSeconds`. That time is measured on the local clock from the moment this
//! replica last saw the holder or renew time change, so an offset between node clocks does not
//! matter (a difference in clock rate does). Every write carries the object's
//! `resourceVersion`, so two replicas cannot both win a race. The leader renews every retry
//! period and gives up leadership when renewals fail for longer than the renew deadline. On
//! shutdown it clears the holder, so that another replica takes over at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::LeaderConfig;
use crate::error::{Categorized, ErrorCategory};

/// A failed Lease request.
#[derive(Debug, thiserror::Error)]
#[error("failed to read or write the leader Lease {namespace}/{name}: {source}")]
pub struct LeaderError {
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

impl Categorized for LeaderError {
    fn category(&self) -> ErrorCategory {
        ErrorCategory::LeaderElection
    }
}

/// Result of one acquire-or-renew attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the Lease.
    Held,
    /// Another replica holds a valid Lease.
    HeldByOther(String),
    /// Another write changed the Lease between the read and the write; try again.
    Conflict,
}

#[derive(Debug, Clone, PartialEq)]
struct Observation {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    seen_at: Instant,
}

/// Takes part in the election for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    namespace: String,
    config: LeaderConfig,
    observed: Mutex<Option<Observation>>,
}

impl LeaderElector {
    /// Creates an elector for the Lease `config.name` in `namespace`.
    pub fn new(client: Client, namespace: &str, config: LeaderConfig) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            config,
            observed: Mutex::new(None),
        }
    }

    /// Returns this replica's identity.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    fn error(&self, source: kube::Error) -> LeaderError {
        LeaderError {
            namespace: self.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    /// Makes one attempt to take or renew the Lease.
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt, LeaderError> {
        let now = Timestamp::now();
        let Some(lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.error(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.next_spec(&LeaseSpec::default(), now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
                Err(error) => Err(self.error(error)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec
            .holder_identity
            .clone()
            .filter(|holder| !holder.is_empty());
        if let Some(holder) = holder
            && holder != self.config.identity
            && !self.holder_expired(&spec)
        {
            return Ok(Attempt::HeldByOther(holder));
        }
        let mut updated = lease;
        updated.spec = Some(self.next_spec(&spec, now));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
            Err(error) => Err(self.error(error)),
        }
    }

    /// Returns the spec this replica writes when it takes or renews a Lease whose current
    /// spec is `current`.
    fn next_spec(&self, current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
        let renewing = current.holder_identity.as_deref() == Some(self.config.identity.as_str());
        let transitions = current.lease_transitions.unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(whole_seconds(self.config.lease_duration)),
            acquire_time: if renewing {
                current.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if renewing {
                transitions
            } else {
                transitions + 1
            }),
            ..current.clone()
        }
    }

    /// Returns whether the other holder's Lease ran out, by the local clock since this replica
    /// last saw the holder or renew time change.
    fn holder_expired(&self, spec: &LeaseSpec) -> bool {
        let now = Instant::now();
        let mut observed = self
            .observed
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let current = (spec.holder_identity.clone(), spec.renew_time.clone());
        let changed = observed
            .as_ref()
            .is_none_or(|seen| (seen.holder.clone(), seen.renew_time.clone()) != current);
        if changed {
            *observed = Some(Observation {
                holder: current.0,
                renew_time: current.1,
                seen_at: now,
            });
            return false;
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|seconds| u64::try_from(seconds).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        observed
            .as_ref()
            .is_some_and(|seen| now.duration_since(seen.seen_at) > duration)
    }

    /// Tries until this replica holds the Lease. Returns `false` when `cancel` fires first.
    pub async fn acquire(&self, cancel: &CancellationToken) -> bool {
        let mut last_holder = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => {
                    tracing::info!(identity = %self.config.identity, lease = %self.config.name,
                        "acquired the leader Lease");
                    return true;
                }
                Ok(Attempt::HeldByOther(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(%holder, lease = %self.config.name,
                            "another replica leads; standing by");
                        last_holder = Some(holder);
                    }
                }
                Ok(Attempt::Conflict) => {}
                Err(error) => tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "leader election attempt failed; retrying"
                ),
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
    }

    /// Renews the Lease every retry period until `stop` fires. The returned token fires when
    /// leadership is lost: another replica took the Lease, or renewals failed for longer than
    /// the renew deadline. Await the returned task before [`LeaderElector::release`], so that a
    /// renewal in flight cannot write the Lease again after the release.
    pub fn spawn_renewal(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let lost = CancellationToken::new();
        let elector = Arc::clone(self);
        let lost_signal = lost.clone();
        let task = tokio::spawn(async move {
            let mut last_renewal = Instant::now();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(elector.config.retry_period) => {}
                }
                let attempt = tokio::time::timeout(
                    elector.config.renew_deadline,
                    elector.try_acquire_or_renew(),
                )
                .await;
                match attempt {
                    Ok(Ok(Attempt::Held)) => last_renewal = Instant::now(),
                    Ok(Ok(Attempt::HeldByOther(holder))) => {
                        tracing::error!(%holder, "another replica took the leader Lease");
                        lost_signal.cancel();
                        return;
                    }
                    Ok(Ok(Attempt::Conflict)) => {}
                    Ok(Err(error)) => tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "failed to renew the leader Lease"
                    ),
                    Err(_) => tracing::warn!("renewing the leader Lease timed out"),
                }
                if last_renewal.elapsed() > elector.config.renew_deadline {
                    tracing::error!(deadline = ?elector.config.renew_deadline,
                        "could not renew the leader Lease within the deadline; giving it up");
                    lost_signal.cancel();
                    return;
                }
            }
        });
        (lost, task)
    }

    /// Clears the holder of the Lease if this replica holds it, so that another replica can
    /// take over without waiting for it to expire.
    pub async fn release(&self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.error(e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(lease = %self.config.name, "released the leader Lease");
                Ok(())
            }
            // Someone else wrote the Lease, so this replica no longer holds it.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(self.error(error)),
        }
    }
}

fn whole_seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}
