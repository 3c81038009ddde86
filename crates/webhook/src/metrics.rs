//! Prometheus metrics of the webhook.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of one admission: `result` is `injected`, `skipped` or `error`, and `reason` is the cause
/// (see [`crate::admission::Outcome::reason`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    result: &'static str,
    reason: &'static str,
}

/// Metric handles, cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    admissions: Family<AdmissionLabels, Counter>,
    duration: Histogram,
}

/// Upper bounds of the latency histogram buckets, in seconds: 0.25 ms to 4 s.
const DURATION_BUCKETS: [f64; 13] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 4.0,
];

impl Metrics {
    /// Creates the metrics and registers them under the prefix `renku_ssh_webhook`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let registry = registry.sub_registry_with_prefix("renku_ssh_webhook");
        registry.register(
            "admissions",
            "Pod admission reviews answered, by result (injected, skipped, error) and reason",
            metrics.admissions.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time from receiving an admission review to sending the response",
            metrics.duration.clone(),
        );
        metrics
    }

    /// Counts one admission and its duration.
    pub fn observe(&self, result: &'static str, reason: &'static str, elapsed: Duration) {
        self.admissions
            .get_or_create(&AdmissionLabels { result, reason })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

impl Default for Metrics {
    /// Returns metrics that are not registered anywhere.
    fn default() -> Self {
        Self {
            admissions: Family::default(),
            duration: Histogram::new(DURATION_BUCKETS),
        }
    }
}
