//! Volumes the sidecar adds to the pod, and the volume mounts of the sidecar.

use serde_json::{Map, Value, json};

use super::{
    BIN_DIR, BIN_VOLUME, HOST_KEY_DIR, HOST_KEY_VOLUME, KEYS_DIR, KEYS_VOLUME, NotInjected,
    host_key_secret_name, keys_secret_name,
};

/// Size limit of the `emptyDir` that contains the binary. A static `renku-sshd` takes about 10 MiB.
const BIN_VOLUME_SIZE_LIMIT: &str = "64Mi";

/// Pod-level facts that decide the file mode of the Secret volumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodMode {
    /// The pod sets `securityContext.fsGroup`.
    WithFsGroup,
    /// The pod sets no `fsGroup`.
    WithoutFsGroup,
}

impl PodMode {
    /// Reads the pod spec's `securityContext.fsGroup`.
    pub fn from_spec(spec: &Map<String, Value>) -> Self {
        let fs_group = spec
            .get("securityContext")
            .and_then(|context| context.get("fsGroup"));
        if fs_group.is_some_and(|group| !group.is_null()) {
            Self::WithFsGroup
        } else {
            Self::WithoutFsGroup
        }
    }
}

/// Returns the `defaultMode` of the two Secret volumes.
///
/// The kubelet writes Secret files owned by root. With a pod `fsGroup` it also gives the files
/// that group and adds group read permission. Every container runs with `fsGroup` as a
/// supplementary group, so mode 0440 lets the non-root session user read the host key and other
/// users cannot. Amalthea sets `fsGroup` to the session's group. Without an `fsGroup` the only way
/// for an unknown non-root user to read the files is mode 0444. Only the sidecar mounts these
/// volumes, and every process in it runs as the session user, so 0444 exposes the files to no
/// other account in practice.
pub fn secret_file_mode(mode: PodMode) -> i64 {
    match mode {
        PodMode::WithFsGroup => 0o440,
        PodMode::WithoutFsGroup => 0o444,
    }
}

/// Returns the three volumes the sidecar adds.
///
/// The Secrets are `optional`, so the pod starts before the operator has written them. The
/// kubelet fills the volumes in once they exist, and `renku-sshd` waits for its host key.
pub(super) fn volumes(session: &str, mode: PodMode) -> Vec<Value> {
    let file_mode = secret_file_mode(mode);
    vec![
        json!({ "name": BIN_VOLUME, "emptyDir": { "sizeLimit": BIN_VOLUME_SIZE_LIMIT } }),
        json!({
            "name": KEYS_VOLUME,
            "secret": {
                "secretName": keys_secret_name(session),
                "optional": true,
                "defaultMode": file_mode,
            },
        }),
        json!({
            "name": HOST_KEY_VOLUME,
            "secret": {
                "secretName": host_key_secret_name(session),
                "optional": true,
                "defaultMode": file_mode,
            },
        }),
    ]
}

/// Returns the sidecar's own mounts. Each mounts a whole volume, never a `subPath`, because the
/// kubelet never updates a `subPath` mount when the Secret changes.
pub(super) fn sidecar_mounts() -> Vec<Value> {
    vec![
        json!({ "name": BIN_VOLUME, "mountPath": BIN_DIR, "readOnly": true }),
        json!({ "name": KEYS_VOLUME, "mountPath": KEYS_DIR, "readOnly": true }),
        json!({ "name": HOST_KEY_VOLUME, "mountPath": HOST_KEY_DIR, "readOnly": true }),
    ]
}

/// Returns the init container's mount of the binary volume.
pub(super) fn install_mounts() -> Vec<Value> {
    vec![json!({ "name": BIN_VOLUME, "mountPath": BIN_DIR })]
}

/// Rejects a pod that already has a volume with one of the sidecar's volume names.
pub(super) fn check_volume_names(volumes: &[Value]) -> Result<(), NotInjected> {
    for volume in volumes {
        let name = volume
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if [BIN_VOLUME, KEYS_VOLUME, HOST_KEY_VOLUME].contains(&name) {
            return Err(NotInjected::Conflict(format!(
                "the pod already has a volume named {name}"
            )));
        }
    }
    Ok(())
}

/// Returns the session container's volume mounts for the sidecar, so that an SSH login sees the
/// same files as the session container.
///
/// A mount at one of the sidecar's own paths would be a duplicate mount path, which the API
/// server rejects, so such a pod gets no sidecar. `mountPropagation: Bidirectional` is allowed
/// only in privileged containers and the sidecar is not privileged, so that field is dropped from
/// the copy (the mount then uses the default, no propagation).
pub(super) fn copied_mounts(main: &Map<String, Value>) -> Result<Vec<Value>, NotInjected> {
    let mounts = main.get("volumeMounts").and_then(Value::as_array);
    let mut copied = Vec::new();
    for mount in mounts.into_iter().flatten() {
        let path = mount
            .get("mountPath")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let normalised = path.trim_end_matches('/');
        if [BIN_DIR, KEYS_DIR, HOST_KEY_DIR].contains(&normalised) {
            return Err(NotInjected::Conflict(format!(
                "the session container already mounts a volume at {path}"
            )));
        }
        let mut mount = mount.clone();
        if let Some(fields) = mount.as_object_mut() {
            let bidirectional = fields
                .get("mountPropagation")
                .is_some_and(|propagation| propagation == "Bidirectional");
            if bidirectional {
                fields.remove("mountPropagation");
            }
        }
        copied.push(mount);
    }
    Ok(copied)
}
