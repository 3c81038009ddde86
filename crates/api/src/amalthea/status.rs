//! The observed state of a session (`status`), written by amalthea.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{SessionState, UnknownFields};

/// Observed state of a session, written by amalthea.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::kubernetes_conventions)]
pub struct AmaltheaSessionStatus {
    /// Conditions. Amalthea sets `Ready` and `RoutingReady`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<AmaltheaSessionCondition>>,

    /// Overall state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "NotReady"))]
    pub state: Option<SessionState>,

    /// URL of the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Ready and total counts of the session pod's containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_counts: Option<ContainerCounts>,

    /// Ready and total counts of the session pod's init containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container_counts: Option<ContainerCounts>,

    /// Whether the session is idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub idle: Option<bool>,

    /// Time the session became idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<Time>,

    /// Time the session started failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Time>,

    /// Time the session was hibernated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernated_since: Option<Time>,

    /// Time at which culling will hibernate the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will_hibernate_at: Option<Time>,

    /// Id of the current run. A session gets a new one each time it resumes from hibernation.
    #[serde(default, rename = "runID", skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,

    /// Error message, set when `state` is `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,

    /// Fields this model does not name, for example `failedSchedulingSince`.
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
}

impl AmaltheaSessionStatus {
    /// Returns `state`, or `NotReady` when it is unset.
    pub fn state(&self) -> SessionState {
        self.state.clone().unwrap_or(SessionState::NotReady)
    }
}

/// A condition in amalthea's format: unlike `metav1.Condition`, only type and status are
/// required.
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AmaltheaSessionCondition {
    /// Condition type, for example `Ready` or `RoutingReady`.
    #[serde(rename = "type")]
    pub type_: String,

    /// `True`, `False` or `Unknown`.
    pub status: String,

    /// Time of the last change of `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,

    /// Machine-readable reason of the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// Human-readable details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Fields this model does not name.
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
}

/// Ready and total counts of containers.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerCounts {
    /// Number of ready containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<i64>,

    /// Number of containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,

    /// Fields this model does not name.
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
}
