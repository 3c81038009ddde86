//! A read and patch model of amalthea's `AmaltheaSession` (`amalthea.dev/v1alpha1`).
//!
//! Amalthea (github.com/SwissDataScienceCenter/amalthea, Go types in `api/v1alpha1`) owns this
//! resource and its CRD. This project reads sessions and patches a few fields. The model
//! follows three rules so that reading an object and writing it back keeps every field, with
//! the exceptions in the note below:
//!
//! - Every struct keeps the fields it does not name in `unknown_fields`, and serialises them
//!   back unchanged.
//! - Every field amalthea may omit is an `Option`, so an absent field stays absent and an
//!   explicit empty value (`""`, `[]`, `{}`) stays explicit. Methods such as [`Session::port`]
//!   apply amalthea's defaults on read.
//! - Enum fields accept values this model does not know (see [`SessionState::Other`]).
//!
//! Embedded Kubernetes types (containers, volumes, env, resources, affinity, tolerations) use
//! k8s-openapi, like amalthea uses `k8s.io/api`.
//! NOTE: k8s-openapi types drop fields newer than the Kubernetes version this crate is built
//! for. They also write numeric quantities such as `cpu: 1` back as strings (`"1"`), and times
//! in whole seconds of UTC. Amalthea itself writes times that way.
//!
//! `AmaltheaSession::crd()` (from [`kube::CustomResourceExt`]) describes the resource for
//! tests, which need the CRD installed. It keeps amalthea's group, version, kind, short names,
//! status subresource, required fields and the defaults of the fields this model names, and it
//! preserves unknown fields wherever the model does. Clusters use amalthea's own CRD.

mod session;
mod status;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Container, Toleration, Volume};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use self::session::{ReadinessProbe, Session, Storage};
pub use self::status::{AmaltheaSessionCondition, AmaltheaSessionStatus, ContainerCounts};
use crate::string_enum::string_enum;

/// Fields of an object that the model does not name, kept as read.
pub type UnknownFields = BTreeMap<String, serde_json::Value>;

/// Name of the session container in the session pod.
pub const SESSION_CONTAINER_NAME: &str = "amalthea-session";
/// Label on every child of a session whose value is the session name.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Label on every child of a session, with value [`NAME_LABEL_VALUE`].
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Value of [`NAME_LABEL`] on the children of a session.
pub const NAME_LABEL_VALUE: &str = "AmaltheaSession";
/// Pod ports amalthea reserves for its own containers. A sidecar must not listen on them.
pub const RESERVED_PORTS: std::ops::RangeInclusive<i32> = 65530..=65535;

/// Default of `spec.session.port`.
pub const DEFAULT_SESSION_PORT: i32 = 8000;
/// Default of `spec.session.runAsUser` and `spec.session.runAsGroup`.
pub const DEFAULT_SESSION_ID: i64 = 1000;
/// Default of `spec.session.storage.mountPath`.
pub const DEFAULT_MOUNT_PATH: &str = "/workspace";

/// Desired state of a Renku session. Amalthea runs a session as a StatefulSet with one pod
/// `<name>-0`, a Service and a PersistentVolumeClaim, all named like the session.
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) repeats keys such as type_ for its own column"
)]
#[derive(CustomResource, JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "amalthea.dev",
    version = "v1alpha1",
    kind = "AmaltheaSession",
    namespaced,
    status = "AmaltheaSessionStatus",
    derive = "PartialEq",
    shortname = "ams",
    shortname = "amss",
    doc = "A Renku session run by amalthea. This CRD is a stand-in for tests; amalthea owns the \
           real one.",
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.state",
        description = "Overall state of the session."
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.containerCounts.ready",
        description = "Number of ready containers, init containers not counted."
    ),
    printcolumn(
        name = "Total",
        type_ = "string",
        json_path = ".status.containerCounts.total",
        description = "Number of containers, init containers not counted."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Idle",
        type_ = "boolean",
        json_path = ".status.idle",
        description = "Whether the session is idle."
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".status.url",
        description = "URL of the session."
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::kubernetes_conventions)]
pub struct AmaltheaSessionSpec {
    /// Location of the session process: `local` (a container in the session pod) or `remote`
    /// (an external compute resource, driven from the pod). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "default" = "local",
        "x-kubernetes-validations" = [{
            "rule": "self == oldSelf",
            "message": "location is immutable",
        }]
    ))]
    pub location: Option<SessionLocation>,

    /// The session container the user works in.
    pub session: Session,

    /// Authentication in front of the session's HTTP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,

    /// When amalthea hibernates or deletes the session on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub culling: Option<Culling>,

    /// Whether the session is hibernated: its StatefulSet is scaled to zero.
    #[schemars(extend("default" = false))]
    pub hibernated: bool,

    /// Additional containers in the session pod. Amalthea may rename them to avoid collisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_containers: Option<Vec<Container>>,

    /// Additional init containers in the session pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_containers: Option<Vec<Container>>,

    /// Additional volumes in the session pod. Amalthea's own volumes are named `amalthea-*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_volumes: Option<Vec<Volume>>,

    /// Ingress to the session. Without it amalthea creates no Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Ingress>,

    /// Node selector of the session pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Scheduling constraints of the session pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Tolerations of the session pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// When amalthea applies spec changes to the session's children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "always"))]
    pub reconcile_strategy: Option<ReconcileStrategy>,

    /// Priority class of the session pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Service account of the session pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Labels and annotations that amalthea copies onto every child of the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Template>,

    /// `Interactive` (the default) or `NonInteractive`, a run-once job without ingress or
    /// authentication. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "default" = "Interactive",
        "x-kubernetes-validations" = [{
            "rule": "self == oldSelf",
            "message": "session type is immutable",
        }]
    ))]
    pub session_type: Option<SessionType>,

    /// Fields this model does not name, for example `codeRepositories`, `dataSources` and
    /// `imagePullSecrets`.
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
}

impl AmaltheaSession {
    /// Returns the name of the session's only pod, `<session name>-0`, or `None` when the object
    /// has no name.
    pub fn pod_name(&self) -> Option<String> {
        self.metadata.name.as_ref().map(|name| format!("{name}-0"))
    }
}

impl AmaltheaSessionSpec {
    /// Returns `spec.location`, or `local` when it is unset.
    pub fn location(&self) -> SessionLocation {
        self.location.clone().unwrap_or(SessionLocation::Local)
    }

    /// Returns `spec.sessionType`, or `Interactive` when it is unset.
    pub fn session_type(&self) -> SessionType {
        self.session_type
            .clone()
            .unwrap_or(SessionType::Interactive)
    }

    /// Returns `spec.reconcileStrategy`, or `always` when it is unset.
    pub fn reconcile_strategy(&self) -> ReconcileStrategy {
        self.reconcile_strategy
            .clone()
            .unwrap_or(ReconcileStrategy::Always)
    }
}

string_enum! {
    /// Location of the session process (`spec.location`).
    pub enum SessionLocation {
        /// A container in the session pod.
        Local = "local",
        /// A process on an external compute resource.
        Remote = "remote",
    }
}

string_enum! {
    /// Kind of session (`spec.sessionType`).
    pub enum SessionType {
        /// A long-running session that a user works in.
        Interactive = "Interactive",
        /// A run-once job.
        NonInteractive = "NonInteractive",
    }
}

string_enum! {
    /// When amalthea reconciles the session's children (`spec.reconcileStrategy`).
    pub enum ReconcileStrategy {
        /// Never update the children after creating them.
        Never = "never",
        /// Apply every spec change.
        Always = "always",
        /// Apply spec changes only while the session is failed or hibernated.
        WhenFailedOrHibernated = "whenFailedOrHibernated",
    }
}

string_enum! {
    /// Authentication method in front of the session (`spec.authentication.type`).
    pub enum AuthenticationType {
        /// A static token, checked by amalthea's proxy.
        Token = "token",
        /// oauth2-proxy, configured from the referenced Secret.
        Oauth2Proxy = "oauth2proxy",
        /// OpenID Connect, configured from the referenced Secret.
        Oidc = "oidc",
    }
}

string_enum! {
    /// Overall state of a session (`status.state`).
    pub enum SessionState {
        /// All containers run and are ready.
        Running = "Running",
        /// The session failed, and `status.error` contains the reason.
        Failed = "Failed",
        /// The session is scaled to zero.
        Hibernated = "Hibernated",
        /// The session is starting or not ready yet.
        NotReady = "NotReady",
        /// The session runs but some containers are not ready.
        RunningDegraded = "RunningDegraded",
        /// A non-interactive session finished.
        Succeeded = "Succeeded",
    }
}

/// Authentication in front of the session's HTTP port (`spec.authentication`).
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// Whether authentication is on. Defaults to `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub enabled: Option<bool>,

    /// Authentication method.
    #[serde(rename = "type")]
    pub type_: AuthenticationType,

    /// Secret with the configuration of the authentication method.
    pub secret_ref: SessionSecretRef,

    /// Additional volume mounts of the authentication container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_volume_mounts: Option<Vec<k8s_openapi::api::core::v1::VolumeMount>>,

    /// Fields this model does not name.
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
}

impl Authentication {
    /// Returns `enabled`, or `true` when it is unset.
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// Reference to a Secret, and optionally one of its keys, in the session's namespace.
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionSecretRef {
    /// Name of the Secret.
    pub name: String,

    /// Key within the Secret, where the use of the reference needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,

    /// Whether amalthea deletes the Secret together with the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<bool>,

    /// Fields this model does not name.
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
}

/// Culling settings (`spec.culling`). Durations use Go's `time.ParseDuration` syntax, for
/// example `2h30m`, and zero turns a rule off.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Culling {
    /// Maximum age of a session, active or not, before it is hibernated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,

    /// Idle time after which the session is hibernated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_duration: Option<String>,

    /// Time a session may spend starting before it is hibernated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_starting_duration: Option<String>,

    /// Time a session may spend failed before it is hibernated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_duration: Option<String>,

    /// Time a session may stay hibernated before it is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hibernated_duration: Option<String>,

    /// Last time a user interacted with the session. Amalthea counts idle time from the later
    /// of this and `status.idleSince`, so patching it keeps a session in use from being culled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_interaction: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// CPU usage, in cores, below which the session counts as idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "300m"))]
    pub cpu_idle_threshold: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,

    /// Fields this model does not name.
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
}

/// Ingress settings (`spec.ingress`).
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    /// Annotations of the Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,

    /// Ingress class of the Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,

    /// Host name of the session URL. Immutable.
    #[schemars(extend(
        "x-kubernetes-validations" = [{ "rule": "self == oldSelf", "message": "host is immutable" }]
    ))]
    pub host: String,

    /// TLS Secret of the Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<SessionSecretRef>,

    /// Path prefix of the Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "/"))]
    pub path_prefix: Option<String>,

    /// Whether the Ingress uses the cluster's default TLS certificate.
    #[serde(
        default,
        rename = "useDefaultClusterTLSCert",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(extend("default" = false))]
    pub use_default_cluster_tls_cert: Option<bool>,

    /// Whether amalthea reports an `https` URL regardless of the TLS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub assume_https: Option<bool>,

    /// Fields this model does not name.
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
}

/// Template for the metadata of the session's children (`spec.template`).
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    /// Labels and annotations for every child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,

    /// Fields this model does not name.
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
}

/// Labels and annotations that amalthea copies onto every child of the session.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels for every child. Amalthea's own selector labels win on conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,

    /// Annotations for every child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,

    /// Fields this model does not name.
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
}
