//! The pure part of the webhook: from a session pod, build the RFC 6902 JSON patch that adds the
//! SSH sidecar. Nothing here calls the API server.
//!
//! The patch only appends: one init container, one container and three volumes. It never
//! replaces or removes a field, so the pod's own containers reach the API server exactly as the
//! request sent them. The builder works on the pod's JSON, not on k8s-openapi types, so that
//! fields of the session container that it copies (env, volume mounts) keep fields that the
//! compiled Kubernetes version does not know.

mod containers;
mod volumes;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::{Map, Value};

pub use self::volumes::{PodMode, secret_file_mode};

/// Name of the sidecar container that runs `renku-sshd`.
pub const SIDECAR_CONTAINER: &str = "renku-ssh";
/// Name of the init container that copies `renku-sshd` into [`BIN_VOLUME`].
pub const INSTALL_CONTAINER: &str = "renku-ssh-install";
/// `emptyDir` volume that carries the `renku-sshd` binary from the init container to the sidecar.
pub const BIN_VOLUME: &str = "renku-ssh-bin";
/// Secret volume with `authorized_keys` and `trusted_user_ca_keys`.
pub const KEYS_VOLUME: &str = "renku-ssh-keys";
/// Secret volume with the session's SSH host key.
pub const HOST_KEY_VOLUME: &str = "renku-ssh-hostkey";
/// Mount path of [`BIN_VOLUME`].
pub const BIN_DIR: &str = "/opt/renku-ssh/bin";
/// Mount path of [`KEYS_VOLUME`].
pub const KEYS_DIR: &str = "/etc/renku-ssh/keys";
/// Mount path of [`HOST_KEY_VOLUME`].
pub const HOST_KEY_DIR: &str = "/etc/renku-ssh/hostkey";
/// Path of the `renku-sshd` binary in the sidecar.
pub const SSHD_PATH: &str = "/opt/renku-ssh/bin/renku-sshd";
/// TCP port `renku-sshd` listens on in the pod.
pub const SSH_PORT: i32 = 2222;
/// Name of [`SSH_PORT`] in the sidecar's port list.
pub const SSH_PORT_NAME: &str = "ssh";
/// Container amalthea runs the session in. Without it the sidecar copies the first container.
pub const SESSION_CONTAINER: &str = api::amalthea::SESSION_CONTAINER_NAME;

/// Returns the name of the Secret with `authorized_keys` and `trusted_user_ca_keys` of a session.
pub fn keys_secret_name(session: &str) -> String {
    format!("{session}-ssh-keys")
}

/// Returns the name of the Secret with the SSH host key of a session.
pub fn host_key_secret_name(session: &str) -> String {
    format!("{session}-ssh-hostkey")
}

/// Settings of the injected containers. [`crate::Config::validate`] checks them at start-up,
/// because an invalid value would make the API server reject every patched pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectionConfig {
    /// Image of the init container; it must contain `renku-sshd` and a way to copy it.
    pub install_image: String,
    /// Pull policy of the install image; the cluster default when `None`.
    pub install_image_pull_policy: Option<String>,
    /// Command of the init container. It must copy `renku-sshd` to [`SSHD_PATH`].
    pub install_command: Vec<String>,
    /// Image the sidecar runs.
    pub sidecar_image: SidecarImage,
    /// Resource requests and limits of the sidecar.
    pub sidecar_resources: Resources,
    /// Resource requests and limits of the init container.
    pub install_resources: Resources,
}

impl InjectionConfig {
    /// Returns settings with the default command and resources for `install_image`.
    pub fn new(install_image: impl Into<String>) -> Self {
        Self {
            install_image: install_image.into(),
            install_image_pull_policy: None,
            install_command: default_install_command(),
            sidecar_image: SidecarImage::Session,
            sidecar_resources: Resources::sidecar_default(),
            install_resources: Resources::install_default(),
        }
    }
}

/// Default init container command, for the install image that images/sshd/Dockerfile builds:
/// the static binary at `/renku-sshd` and a static `cp` at `/bin/cp`.
pub fn default_install_command() -> Vec<String> {
    ["/bin/cp", "/renku-sshd", SSHD_PATH]
        .map(str::to_owned)
        .to_vec()
}

/// Image the sidecar runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SidecarImage {
    /// The session container's image and pull policy, so that an SSH login finds the same
    /// tools as the session. `renku-sshd` is a static binary and runs in any Linux image.
    #[default]
    Session,
    /// A dedicated image. Env, working directory, user and volume mounts are still copied from
    /// the session container.
    Dedicated {
        /// Image reference.
        image: String,
        /// Pull policy; the cluster default when `None`.
        pull_policy: Option<String>,
    },
}

/// CPU and memory requests and limits, as Kubernetes quantities (`10m`, `64Mi`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    /// CPU request.
    pub cpu_request: String,
    /// Memory request.
    pub memory_request: String,
    /// CPU limit.
    pub cpu_limit: String,
    /// Memory limit.
    pub memory_limit: String,
}

impl Resources {
    /// Default for the sidecar. Shells and commands of SSH logins run in the sidecar, so the
    /// limits cap them, not the session container's limits.
    pub fn sidecar_default() -> Self {
        Self::new("10m", "32Mi", "1", "512Mi")
    }

    /// Default for the init container, which only copies one file.
    pub fn install_default() -> Self {
        Self::new("10m", "16Mi", "200m", "64Mi")
    }

    /// Returns resources from the four quantities.
    pub fn new(
        cpu_request: &str,
        memory_request: &str,
        cpu_limit: &str,
        memory_limit: &str,
    ) -> Self {
        Self {
            cpu_request: cpu_request.to_owned(),
            memory_request: memory_request.to_owned(),
            cpu_limit: cpu_limit.to_owned(),
            memory_limit: memory_limit.to_owned(),
        }
    }

    fn to_json(&self) -> Value {
        serde_json::json!({
            "requests": { "cpu": self.cpu_request, "memory": self.memory_request },
            "limits": { "cpu": self.cpu_limit, "memory": self.memory_limit },
        })
    }
}

/// Reason the builder returns no patch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotInjected {
    /// The pod already has a container named `renku-ssh`.
    #[error("the pod already has a container named {SIDECAR_CONTAINER}")]
    AlreadyInjected,
    /// The pod already uses a name, path or port that the sidecar needs.
    #[error("{0}; the sidecar was not added")]
    Conflict(String),
    /// The pod is not a valid pod object.
    #[error("invalid pod: {0}")]
    InvalidPod(String),
}

impl NotInjected {
    /// Returns the value used in metric labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::AlreadyInjected => "already-injected",
            Self::Conflict(_) => "conflict",
            Self::InvalidPod(_) => "invalid-pod",
        }
    }
}

/// Builds the JSON patch that adds the sidecar for `session` to `pod` (the pod object's JSON).
pub fn build_patch(
    pod: &Value,
    session: &str,
    config: &InjectionConfig,
) -> Result<Patch, NotInjected> {
    let spec = pod
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| NotInjected::InvalidPod("the pod has no spec".to_owned()))?;
    let containers = array_field(spec, "containers");
    let init_containers = array_field(spec, "initContainers");
    check_names(containers, init_containers)?;
    check_port(containers, init_containers)?;
    volumes::check_volume_names(array_field(spec, "volumes"))?;

    let main = main_container(containers)?;
    let pod_mode = PodMode::from_spec(spec);
    let copied_mounts = volumes::copied_mounts(main)?;
    let sidecar = containers::sidecar(main, spec, session, config, copied_mounts)?;
    let install = containers::install(main, spec, config);

    let mut operations = Vec::new();
    append(
        &mut operations,
        spec,
        "volumes",
        volumes::volumes(session, pod_mode),
    );
    append(&mut operations, spec, "initContainers", vec![install]);
    append(&mut operations, spec, "containers", vec![sidecar]);
    Ok(Patch(operations))
}

fn array_field<'a>(spec: &'a Map<String, Value>, field: &str) -> &'a [Value] {
    spec.get(field)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn name_of(container: &Value) -> Option<&str> {
    container.get("name").and_then(Value::as_str)
}

fn check_names(containers: &[Value], init_containers: &[Value]) -> Result<(), NotInjected> {
    let names: Vec<&str> = containers
        .iter()
        .chain(init_containers)
        .filter_map(name_of)
        .collect();
    if names.contains(&SIDECAR_CONTAINER) {
        return Err(NotInjected::AlreadyInjected);
    }
    if names.contains(&INSTALL_CONTAINER) {
        return Err(NotInjected::Conflict(format!(
            "the pod already has a container named {INSTALL_CONTAINER}"
        )));
    }
    Ok(())
}

/// Rejects a pod in which another container declares port 2222: containers share the pod's
/// network namespace, so `renku-sshd` could not bind it.
fn check_port(containers: &[Value], init_containers: &[Value]) -> Result<(), NotInjected> {
    for container in containers.iter().chain(init_containers) {
        let ports = container.get("ports").and_then(Value::as_array);
        let uses_port = ports.into_iter().flatten().any(|port| {
            port.get("containerPort").and_then(Value::as_i64) == Some(i64::from(SSH_PORT))
        });
        if uses_port {
            let name = name_of(container).unwrap_or("<unnamed>");
            return Err(NotInjected::Conflict(format!(
                "container {name} already declares port {SSH_PORT}"
            )));
        }
    }
    Ok(())
}

/// Returns the container named `amalthea-session`, else the first container.
fn main_container(containers: &[Value]) -> Result<&Map<String, Value>, NotInjected> {
    let chosen = containers
        .iter()
        .find(|container| name_of(container) == Some(SESSION_CONTAINER))
        .or_else(|| containers.first());
    chosen
        .and_then(Value::as_object)
        .ok_or_else(|| NotInjected::InvalidPod("the pod has no containers".to_owned()))
}

/// Appends `items` to the array `field` of the pod spec: one `add` of the whole array when the
/// field is absent, else one `add` at `-` per item.
fn append(
    operations: &mut Vec<PatchOperation>,
    spec: &Map<String, Value>,
    field: &str,
    items: Vec<Value>,
) {
    let exists = spec.get(field).is_some_and(Value::is_array);
    if exists {
        for item in items {
            let path = PointerBuf::from_tokens(["spec", field, "-"]);
            operations.push(PatchOperation::Add(AddOperation { path, value: item }));
        }
    } else {
        let path = PointerBuf::from_tokens(["spec", field]);
        operations.push(PatchOperation::Add(AddOperation {
            path,
            value: Value::Array(items),
        }));
    }
}

#[cfg(test)]
mod tests;
