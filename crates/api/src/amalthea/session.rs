//! The session container (`spec.session`).

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, VolumeMount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DEFAULT_MOUNT_PATH, DEFAULT_SESSION_ID, DEFAULT_SESSION_PORT, UnknownFields};

/// The session container the user works in (`spec.session`).
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// Container image.
    pub image: String,

    /// Image pull policy: `Always`, `Never` or `IfNotPresent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Always"))]
    pub image_pull_policy: Option<String>,

    /// Command, or the image's entrypoint when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,

    /// Arguments, or the image's `CMD` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,

    /// Environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,

    /// Resource requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// TCP port of the session's HTTP server. Defaults to 8000. Amalthea reserves ports 65530 to
    /// 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = DEFAULT_SESSION_PORT), range(min = 1, max = 65529))]
    pub port: Option<i32>,

    /// Session volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = {}))]
    pub storage: Option<Storage>,

    /// Size of `/dev/shm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Quantity>,

    /// Absolute working directory, or the image's working directory when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,

    /// User id of the session process. Defaults to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = DEFAULT_SESSION_ID), range(min = 0))]
    pub run_as_user: Option<i64>,

    /// Group id of the session process, also the pod's `fsGroup`. Defaults to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = DEFAULT_SESSION_ID), range(min = 0))]
    pub run_as_group: Option<i64>,

    /// URL path of the session, below the ingress path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "/"))]
    pub url_path: Option<String>,

    /// Whether the proxy strips `urlPath` from requests before they reach the session.
    #[serde(
        default,
        rename = "stripURLPath",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(extend("default" = false))]
    pub strip_url_path: Option<bool>,

    /// Additional volume mounts of the session container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_volume_mounts: Option<Vec<VolumeMount>>,

    /// Readiness probe of the session container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = {}))]
    pub readiness_probe: Option<ReadinessProbe>,

    /// Fields this model does not name, for example `remoteSecretRef`.
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
}

impl Session {
    /// Returns `port`, or 8000 when it is unset.
    pub fn port(&self) -> i32 {
        self.port.unwrap_or(DEFAULT_SESSION_PORT)
    }

    /// Returns `runAsUser`, or 1000 when it is unset.
    pub fn run_as_user(&self) -> i64 {
        self.run_as_user.unwrap_or(DEFAULT_SESSION_ID)
    }

    /// Returns `runAsGroup`, or 1000 when it is unset.
    pub fn run_as_group(&self) -> i64 {
        self.run_as_group.unwrap_or(DEFAULT_SESSION_ID)
    }

    /// Returns where the session volume is mounted: `storage.mountPath`, or `/workspace` when
    /// it is unset.
    pub fn mount_path(&self) -> &str {
        self.storage
            .as_ref()
            .and_then(|storage| storage.mount_path.as_deref())
            .unwrap_or(DEFAULT_MOUNT_PATH)
    }
}

/// The session volume (`spec.session.storage`), a PersistentVolumeClaim named like the session.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Storage class of the claim, or the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,

    /// Requested size of the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "1Gi"))]
    pub size: Option<Quantity>,

    /// Absolute mount path in the session container. Defaults to `/workspace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = DEFAULT_MOUNT_PATH))]
    pub mount_path: Option<String>,

    /// Fields this model does not name.
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
}

/// Readiness probe of the session container (`spec.session.readinessProbe`).
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessProbe {
    /// Probe type: `none`, `tcp` (the default) or `http`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "tcp"))]
    pub type_: Option<String>,

    /// Fields this model does not name.
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
}
