//! One admission review: decide whether the pod gets the sidecar and respond with the patch.
//!
//! Every response to a review with a request allows the pod. Errors and unknown cases leave the
//! pod unchanged, so the webhook can delay a session by at most its timeout and never stop it
//! from starting. A review without a request gets an `invalid` response without a uid, which
//! kube-apiserver treats as a failed call and, under `failurePolicy: Ignore`, ignores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::amalthea::{INSTANCE_LABEL, NAME_LABEL, NAME_LABEL_VALUE};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::cache::SessionCache;
use crate::metrics::Metrics;
use crate::policy::EnabledBy;
use crate::sidecar::{InjectionConfig, NotInjected, build_patch};

/// Result of one admission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added.
    Injected(EnabledBy),
    /// The pod was allowed unchanged, by design.
    Skipped(SkipReason),
    /// The pod was allowed unchanged because something failed.
    Failed(FailReason),
}

/// Reason a pod was allowed unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The review is not a pod CREATE.
    NotPodCreate,
    /// The pod lacks the amalthea session labels.
    NotSessionPod,
    /// The session does not have SSH enabled under the policy.
    SshDisabled,
    /// Under the `annotated` policy, neither the session nor an SSHAccess for it is in the cache.
    SessionNotFound,
    /// The pod already has the sidecar.
    AlreadyInjected,
    /// The pod already uses a name, path or port the sidecar needs.
    Conflict,
}

/// Failure that kept the webhook from deciding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The review has no object.
    InvalidRequest,
    /// The pod object is malformed.
    InvalidPod,
    /// The caches had not completed their first list in time.
    CacheNotSynced,
    /// The patch could not be serialised.
    PatchSerialisation,
}

impl Outcome {
    /// Returns the `result` metric label: `injected`, `skipped` or `error`.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Injected(_) => "injected",
            Self::Skipped(_) => "skipped",
            Self::Failed(_) => "error",
        }
    }

    /// Returns the `reason` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Injected(enabled_by) => enabled_by.as_str(),
            Self::Skipped(reason) => match reason {
                SkipReason::NotPodCreate => "not-pod-create",
                SkipReason::NotSessionPod => "not-session-pod",
                SkipReason::SshDisabled => "ssh-disabled",
                SkipReason::SessionNotFound => "session-not-found",
                SkipReason::AlreadyInjected => "already-injected",
                SkipReason::Conflict => "conflict",
            },
            Self::Failed(reason) => match reason {
                FailReason::InvalidRequest => "invalid-request",
                FailReason::InvalidPod => "invalid-pod",
                FailReason::CacheNotSynced => "cache-not-synced",
                FailReason::PatchSerialisation => "patch-serialisation",
            },
        }
    }
}

/// A decision with the details that go into the log line.
struct Decision {
    outcome: Outcome,
    session: Option<String>,
    patch: Option<json_patch::Patch>,
    detail: Option<String>,
}

impl Decision {
    fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            session: None,
            patch: None,
            detail: None,
        }
    }
}

/// Returns the session name of an amalthea session pod: the `app.kubernetes.io/instance` label
/// of a pod labelled `app.kubernetes.io/name=AmaltheaSession`.
fn session_name(pod: &DynamicObject) -> Option<&String> {
    let labels = pod.metadata.labels.as_ref()?;
    if labels
        .get(NAME_LABEL)
        .is_none_or(|value| value != NAME_LABEL_VALUE)
    {
        return None;
    }
    labels.get(INSTANCE_LABEL).filter(|name| !name.is_empty())
}

/// Handler of admission reviews.
#[derive(Clone)]
pub struct Admission {
    cache: Arc<SessionCache>,
    injection: Arc<InjectionConfig>,
    metrics: Metrics,
    cache_sync_wait: Duration,
}

impl Admission {
    /// Creates the handler.
    pub fn new(
        cache: Arc<SessionCache>,
        injection: InjectionConfig,
        metrics: Metrics,
        cache_sync_wait: Duration,
    ) -> Self {
        Self {
            cache,
            injection: Arc::new(injection),
            metrics,
            cache_sync_wait,
        }
    }

    /// Decides one review and returns the response. `started` is when the request arrived, for the
    /// latency metric.
    pub async fn review(
        &self,
        review: AdmissionReview<DynamicObject>,
        started: Instant,
    ) -> AdmissionReview<DynamicObject> {
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(request) => request,
            Err(_) => {
                let outcome = Outcome::Failed(FailReason::InvalidRequest);
                self.metrics
                    .observe(outcome.result(), outcome.reason(), started.elapsed());
                tracing::warn!("admission review without a request");
                return AdmissionResponse::invalid("the admission review has no request")
                    .into_review();
            }
        };
        let mut decision = self.decide(&request).await;
        let mut response = AdmissionResponse::from(&request);
        if let Some(patch) = decision.patch.take() {
            match response.clone().with_patch(patch) {
                Ok(patched) => response = patched,
                Err(error) => {
                    decision.outcome = Outcome::Failed(FailReason::PatchSerialisation);
                    decision.detail = Some(error.to_string());
                }
            }
        }
        if decision.outcome == Outcome::Skipped(SkipReason::Conflict) {
            let detail = decision.detail.clone().unwrap_or_default();
            response.warnings = Some(vec![format!("renku-ssh: {detail}")]);
        }
        self.record(&request, &decision, started.elapsed());
        response.into_review()
    }

    async fn decide(&self, request: &AdmissionRequest<DynamicObject>) -> Decision {
        let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
        if request.operation != Operation::Create || !is_pod || request.sub_resource.is_some() {
            return Decision::new(Outcome::Skipped(SkipReason::NotPodCreate));
        }
        let Some(pod) = &request.object else {
            return Decision::new(Outcome::Failed(FailReason::InvalidRequest));
        };
        let Some(session) = session_name(pod) else {
            return Decision::new(Outcome::Skipped(SkipReason::NotSessionPod));
        };
        let mut decision = self.decide_for_session(request, pod, session).await;
        decision.session = Some(session.clone());
        decision
    }

    async fn decide_for_session(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        pod: &DynamicObject,
        session: &str,
    ) -> Decision {
        if !self.cache.is_synced() && !self.cache.wait_synced(self.cache_sync_wait).await {
            return Decision::new(Outcome::Failed(FailReason::CacheNotSynced));
        }
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        let facts = self.cache.facts(&namespace, session);
        let policy = self.cache.policy();
        let Some(enabled_by) = policy.evaluate(facts) else {
            let reason = if policy.reads_sessions() && !facts.session_found {
                SkipReason::SessionNotFound
            } else {
                SkipReason::SshDisabled
            };
            return Decision::new(Outcome::Skipped(reason));
        };
        let pod_json = match serde_json::to_value(pod) {
            Ok(json) => json,
            Err(error) => {
                let mut decision = Decision::new(Outcome::Failed(FailReason::InvalidPod));
                decision.detail = Some(error.to_string());
                return decision;
            }
        };
        match build_patch(&pod_json, session, &self.injection) {
            Ok(patch) => {
                let mut decision = Decision::new(Outcome::Injected(enabled_by));
                decision.patch = Some(patch);
                decision
            }
            Err(not_injected) => {
                let outcome = match &not_injected {
                    NotInjected::AlreadyInjected => Outcome::Skipped(SkipReason::AlreadyInjected),
                    NotInjected::Conflict(_) => Outcome::Skipped(SkipReason::Conflict),
                    NotInjected::InvalidPod(_) => Outcome::Failed(FailReason::InvalidPod),
                };
                let mut decision = Decision::new(outcome);
                decision.detail = Some(not_injected.to_string());
                decision
            }
        }
    }

    /// Counts the decision and writes its log line.
    fn record(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        decision: &Decision,
        elapsed: Duration,
    ) {
        let outcome = &decision.outcome;
        self.metrics
            .observe(outcome.result(), outcome.reason(), elapsed);
        let object = request.object.as_ref();
        let generate_name = object.and_then(|pod| pod.metadata.generate_name.as_deref());
        let pod = match (request.name.as_str(), generate_name) {
            ("", Some(generate_name)) => format!("{generate_name}*"),
            (name, _) => name.to_owned(),
        };
        let namespace = request.namespace.as_deref().unwrap_or_default();
        let session = decision.session.as_deref().unwrap_or_default();
        let detail = decision.detail.as_deref().unwrap_or_default();
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        match outcome {
            Outcome::Failed(_) => tracing::warn!(
                namespace,
                pod,
                session,
                result = outcome.result(),
                reason = outcome.reason(),
                detail,
                elapsed_ms,
                "pod admitted without the SSH sidecar after an error"
            ),
            Outcome::Skipped(SkipReason::Conflict) => tracing::warn!(
                namespace,
                pod,
                session,
                result = outcome.result(),
                reason = outcome.reason(),
                detail,
                elapsed_ms,
                "pod admitted without the SSH sidecar"
            ),
            _ => tracing::info!(
                namespace,
                pod,
                session,
                result = outcome.result(),
                reason = outcome.reason(),
                elapsed_ms,
                "pod admission decided"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::policy::SshPolicy;

    fn review(operation: &str, labels: Value, containers: Value) -> AdmissionReview<DynamicObject> {
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "uid-1",
                "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "name": "alice-0",
                "namespace": "renku",
                "operation": operation,
                "userInfo": {},
                "object": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": { "name": "alice-0", "labels": labels },
                    "spec": { "containers": containers },
                },
                "oldObject": null,
            },
        }))
        .expect("valid review")
    }

    fn session_labels() -> Value {
        json!({ "app.kubernetes.io/name": "AmaltheaSession", "app.kubernetes.io/instance": "alice" })
    }

    fn main_container() -> Value {
        json!([{ "name": "amalthea-session", "image": "renku/python:3.12" }])
    }

    fn admission(policy: SshPolicy) -> Admission {
        let cache = Arc::new(SessionCache::new(policy));
        let injection = InjectionConfig::new("registry.example/renku-sshd:1");
        Admission::new(
            cache,
            injection,
            Metrics::default(),
            Duration::from_millis(20),
        )
    }

    async fn answer(
        admission: &Admission,
        review: AdmissionReview<DynamicObject>,
    ) -> AdmissionResponse {
        admission
            .review(review, Instant::now())
            .await
            .response
            .expect("a response")
    }

    #[tokio::test]
    async fn session_pod_under_policy_all_is_patched() {
        let response = answer(
            &admission(SshPolicy::All),
            review("CREATE", session_labels(), main_container()),
        )
        .await;
        assert!(response.allowed);
        assert_eq!(response.uid, "uid-1");
        assert!(response.patch.is_some());
    }

    #[tokio::test]
    async fn other_pods_and_operations_are_allowed_unchanged() {
        let admission = admission(SshPolicy::All);
        let cases = [
            review("UPDATE", session_labels(), main_container()),
            review("CREATE", json!({ "app": "web" }), main_container()),
            review(
                "CREATE",
                json!({ "app.kubernetes.io/name": "AmaltheaSession" }),
                main_container(),
            ),
        ];
        for case in cases {
            let response = answer(&admission, case).await;
            assert!(response.allowed);
            assert!(response.patch.is_none());
        }
    }

    #[tokio::test]
    async fn unsynced_cache_allows_pod_unchanged() {
        let admission = admission(SshPolicy::Explicit);
        let response = answer(
            &admission,
            review("CREATE", session_labels(), main_container()),
        )
        .await;
        assert!(response.allowed);
        assert!(response.patch.is_none());
    }

    #[tokio::test]
    async fn conflict_is_reported_as_warning() {
        let containers = json!([
            { "name": "amalthea-session", "image": "renku/python:3.12", "ports": [{ "containerPort": 2222 }] },
        ]);
        let response = answer(
            &admission(SshPolicy::All),
            review("CREATE", session_labels(), containers),
        )
        .await;
        assert!(response.allowed);
        assert!(response.patch.is_none());
        let warnings = response.warnings.expect("a warning");
        assert!(warnings[0].contains("port 2222"), "{warnings:?}");
    }

    #[test]
    fn outcome_labels_are_stable() {
        assert_eq!(
            Outcome::Injected(EnabledBy::Annotation).result(),
            "injected"
        );
        assert_eq!(
            Outcome::Injected(EnabledBy::Annotation).reason(),
            "annotation"
        );
        assert_eq!(
            Outcome::Skipped(SkipReason::SessionNotFound).reason(),
            "session-not-found"
        );
        assert_eq!(
            Outcome::Failed(FailReason::CacheNotSynced).result(),
            "error"
        );
    }
}
