//! Prometheus metrics of the operator, served at `/metrics` on the admin server.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::ErrorCategory;

/// Prefix of every metric name.
pub const METRIC_PREFIX: &str = "renku_ssh_operator";

/// The two controllers, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControllerName {
    /// The AmaltheaSession controller, which keeps one SSHAccess per enabled session.
    Session,
    /// The SSHAccess controller, which keeps the Secrets, Service, NetworkPolicy and status.
    SshAccess,
}

impl ControllerName {
    /// Returns the label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::SshAccess => "sshaccess",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReconcileLabels {
    controller: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    category: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    outcome: &'static str,
}

/// Every metric of the operator. Per-object values are kept here and summed, so that a gauge
/// never carries an object name as a label.
pub struct Metrics {
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
    accepted_keys: Gauge<i64, AtomicI64>,
    key_updates: Counter,
    failing_sources: Family<SourceLabels, Gauge<i64, AtomicI64>>,
    user_preferences_requests: Family<RequestLabels, Counter>,
    leader: Gauge<i64, AtomicI64>,
    per_object: Mutex<HashMap<String, ObjectFigures>>,
}

#[derive(Clone, Copy, Default)]
struct ObjectFigures {
    accepted_keys: i64,
    failing_secrets: i64,
    failing_user_preferences: i64,
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            errors: Family::default(),
            accepted_keys: Gauge::default(),
            key_updates: Counter::default(),
            failing_sources: Family::default(),
            user_preferences_requests: Family::default(),
            leader: Gauge::default(),
            per_object: Mutex::new(HashMap::new()),
        };
        registry.register(
            "reconciles",
            "Reconciles by controller and result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile by controller",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by controller and error category",
            metrics.errors.clone(),
        );
        registry.register(
            "accepted_keys",
            "Public keys accepted across all SSHAccess objects",
            metrics.accepted_keys.clone(),
        );
        registry.register(
            "authorized_keys_updates",
            "Writes of an authorized_keys file whose content changed",
            metrics.key_updates.clone(),
        );
        registry.register(
            "failing_key_sources",
            "Key sources that currently cannot be read, by kind",
            metrics.failing_sources.clone(),
        );
        registry.register(
            "user_preferences_requests",
            "Requests to the user-preferences API by outcome",
            metrics.user_preferences_requests.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease, else 0",
            metrics.leader.clone(),
        );
        metrics
    }

    /// Records one reconcile's outcome and duration.
    pub fn observe_reconcile(
        &self,
        controller: ControllerName,
        error: Option<ErrorCategory>,
        duration: Duration,
    ) {
        let controller = controller.as_str();
        let result = if error.is_some() { "error" } else { "success" };
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
        self.reconcile_duration
            .get_or_create(&ControllerLabels { controller })
            .observe(duration.as_secs_f64());
        if let Some(category) = error {
            let category = category.as_str();
            self.errors
                .get_or_create(&ErrorLabels {
                    controller,
                    category,
                })
                .inc();
        }
    }

    /// Counts a write of an `authorized_keys` file with new content.
    pub fn count_key_update(&self) {
        self.key_updates.inc();
    }

    /// Records the current key figures of one SSHAccess, identified by `namespace/name`.
    pub fn set_object_keys(
        &self,
        object: &str,
        accepted_keys: usize,
        failing_secrets: usize,
        failing_user_preferences: usize,
    ) {
        let figures = ObjectFigures {
            accepted_keys: saturate(accepted_keys),
            failing_secrets: saturate(failing_secrets),
            failing_user_preferences: saturate(failing_user_preferences),
        };
        let mut per_object = self
            .per_object
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let previous = per_object
            .insert(object.to_owned(), figures)
            .unwrap_or_default();
        self.apply_delta(previous, figures);
    }

    /// Forgets the key figures of an SSHAccess that no longer exists.
    pub fn forget_object(&self, object: &str) {
        let mut per_object = self
            .per_object
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(previous) = per_object.remove(object) {
            self.apply_delta(previous, ObjectFigures::default());
        }
    }

    fn apply_delta(&self, previous: ObjectFigures, current: ObjectFigures) {
        self.accepted_keys
            .inc_by(current.accepted_keys - previous.accepted_keys);
        self.failing_sources
            .get_or_create(&SourceLabels { kind: "secret" })
            .inc_by(current.failing_secrets - previous.failing_secrets);
        self.failing_sources
            .get_or_create(&SourceLabels {
                kind: "userPreferences",
            })
            .inc_by(current.failing_user_preferences - previous.failing_user_preferences);
    }

    /// Counts one request to the user-preferences API; `outcome` is a fixed word such as
    /// `ok`, `not_modified`, `not_found`, `unauthorized`, `server_error` or `unreachable`.
    pub fn count_user_preferences_request(&self, outcome: &'static str) {
        self.user_preferences_requests
            .get_or_create(&RequestLabels { outcome })
            .inc();
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }
}

fn saturate(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode metrics");
        text
    }

    #[test]
    fn reconcile_outcomes_are_counted() {
        let mut registry = Registry::with_prefix(METRIC_PREFIX);
        let metrics = Metrics::register(&mut registry);

        metrics.observe_reconcile(ControllerName::SshAccess, None, Duration::from_millis(3));
        metrics.observe_reconcile(
            ControllerName::SshAccess,
            Some(ErrorCategory::Kubernetes),
            Duration::from_millis(3),
        );

        let text = encode(&registry);
        assert!(
            text.contains(
                "renku_ssh_operator_reconciles_total{controller=\"sshaccess\",result=\"success\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "renku_ssh_operator_reconcile_errors_total{controller=\"sshaccess\",category=\"Kubernetes\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("renku_ssh_operator_reconcile_duration_seconds_count"),
            "{text}"
        );
    }

    #[test]
    fn per_object_figures_are_summed() {
        let mut registry = Registry::with_prefix(METRIC_PREFIX);
        let metrics = Metrics::register(&mut registry);

        metrics.set_object_keys("ns/a", 3, 1, 0);
        metrics.set_object_keys("ns/b", 2, 0, 1);
        metrics.set_object_keys("ns/a", 1, 0, 0);
        metrics.forget_object("ns/b");

        let text = encode(&registry);
        assert!(
            text.contains("renku_ssh_operator_accepted_keys 1"),
            "{text}"
        );
        assert!(
            text.contains("renku_ssh_operator_failing_key_sources{kind=\"secret\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("renku_ssh_operator_failing_key_sources{kind=\"userPreferences\"} 0"),
            "{text}"
        );
    }
}
