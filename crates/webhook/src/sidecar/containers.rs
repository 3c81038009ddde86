//! The init container and the sidecar container.

use serde_json::{Map, Value, json};

use super::volumes::{install_mounts, sidecar_mounts};
use super::{
    HOST_KEY_DIR, INSTALL_CONTAINER, InjectionConfig, KEYS_DIR, NotInjected, SIDECAR_CONTAINER,
    SSH_PORT, SSH_PORT_NAME, SSHD_PATH, SidecarImage,
};

/// User the init container runs as when neither the session container nor the pod names one.
/// Any user can write to the `emptyDir`, and the copied binary stays executable for all users.
const FALLBACK_INSTALL_USER: i64 = 65534;

/// Fields of the session container that the sidecar copies verbatim, so that an SSH login has
/// the session's environment and working directory.
const COPIED_FIELDS: [&str; 3] = ["env", "envFrom", "workingDir"];

/// Returns the `renku-sshd` command line for `session`. The flag names are those of
/// `renku-sshd --help` (crates/sshd).
pub(super) fn sshd_args(session: &str) -> Vec<String> {
    let listen = format!("0.0.0.0:{SSH_PORT}");
    let host_key = format!("{HOST_KEY_DIR}/ssh_host_ed25519_key");
    let authorized_keys = format!("{KEYS_DIR}/authorized_keys");
    let trusted_ca_keys = format!("{KEYS_DIR}/trusted_user_ca_keys");
    [
        "--listen",
        &listen,
        "--host-key",
        &host_key,
        "--authorized-keys",
        &authorized_keys,
        "--trusted-user-ca-keys",
        &trusted_ca_keys,
        "--principal",
        session,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// User and group a container runs as: the container's `securityContext`, else the pod's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Identity {
    pub user: Option<i64>,
    pub group: Option<i64>,
}

impl Identity {
    pub(super) fn of(main: &Map<String, Value>, spec: &Map<String, Value>) -> Self {
        let field = |name: &str| {
            security_context_field(main.get("securityContext"), name)
                .or_else(|| security_context_field(spec.get("securityContext"), name))
                .and_then(Value::as_i64)
        };
        Self {
            user: field("runAsUser"),
            group: field("runAsGroup"),
        }
    }
}

fn security_context_field<'a>(context: Option<&'a Value>, name: &str) -> Option<&'a Value> {
    context
        .and_then(|context| context.get(name))
        .filter(|value| !value.is_null())
}

/// Builds the sidecar container.
pub(super) fn sidecar(
    main: &Map<String, Value>,
    spec: &Map<String, Value>,
    session: &str,
    config: &InjectionConfig,
    copied_mounts: Vec<Value>,
) -> Result<Value, NotInjected> {
    let (image, pull_policy) = match &config.sidecar_image {
        SidecarImage::Session => {
            let image = main.get("image").and_then(Value::as_str).ok_or_else(|| {
                NotInjected::InvalidPod("the session container has no image".to_owned())
            })?;
            let pull_policy = main.get("imagePullPolicy").and_then(Value::as_str);
            (image.to_owned(), pull_policy.map(str::to_owned))
        }
        SidecarImage::Dedicated { image, pull_policy } => (image.clone(), pull_policy.clone()),
    };

    let mut container = Map::new();
    container.insert("name".to_owned(), json!(SIDECAR_CONTAINER));
    container.insert("image".to_owned(), json!(image));
    if let Some(pull_policy) = pull_policy {
        container.insert("imagePullPolicy".to_owned(), json!(pull_policy));
    }
    container.insert("command".to_owned(), json!([SSHD_PATH]));
    container.insert("args".to_owned(), json!(sshd_args(session)));
    container.insert(
        "ports".to_owned(),
        json!([{ "name": SSH_PORT_NAME, "containerPort": SSH_PORT, "protocol": "TCP" }]),
    );
    for field in COPIED_FIELDS {
        if let Some(value) = main.get(field).filter(|value| !value.is_null()) {
            container.insert(field.to_owned(), value.clone());
        }
    }
    let mut mounts = copied_mounts;
    mounts.extend(sidecar_mounts());
    container.insert("volumeMounts".to_owned(), Value::Array(mounts));
    container.insert("resources".to_owned(), config.sidecar_resources.to_json());

    let identity = Identity::of(main, spec);
    let mut context = restricted_context(main);
    insert_identity(&mut context, identity);
    if let Some(run_as_non_root) =
        security_context_field(main.get("securityContext"), "runAsNonRoot")
    {
        context.insert("runAsNonRoot".to_owned(), run_as_non_root.clone());
    }
    container.insert("securityContext".to_owned(), Value::Object(context));
    Ok(Value::Object(container))
}

/// Builds the init container that copies `renku-sshd` into the binary volume. It runs as the
/// session user where one is known, so the copied file belongs to that user.
pub(super) fn install(
    main: &Map<String, Value>,
    spec: &Map<String, Value>,
    config: &InjectionConfig,
) -> Value {
    let mut container = Map::new();
    container.insert("name".to_owned(), json!(INSTALL_CONTAINER));
    container.insert("image".to_owned(), json!(config.install_image));
    if let Some(pull_policy) = &config.install_image_pull_policy {
        container.insert("imagePullPolicy".to_owned(), json!(pull_policy));
    }
    container.insert("command".to_owned(), json!(config.install_command));
    container.insert("volumeMounts".to_owned(), Value::Array(install_mounts()));
    container.insert("resources".to_owned(), config.install_resources.to_json());

    let session_identity = Identity::of(main, spec);
    let user = session_identity.user.unwrap_or(FALLBACK_INSTALL_USER);
    let group = session_identity.group.unwrap_or(FALLBACK_INSTALL_USER);
    let mut context = restricted_context(main);
    insert_identity(
        &mut context,
        Identity {
            user: Some(user),
            group: Some(group),
        },
    );
    context.insert("runAsNonRoot".to_owned(), json!(user != 0));
    context.insert("readOnlyRootFilesystem".to_owned(), json!(true));
    container.insert("securityContext".to_owned(), Value::Object(context));
    Value::Object(container)
}

/// Returns the security settings both injected containers share: no privilege escalation, no
/// capabilities, and the session container's seccomp profile when it sets one itself. The copy
/// matters because the `restricted` Pod Security Standard requires a profile on the pod or on
/// every container.
fn restricted_context(main: &Map<String, Value>) -> Map<String, Value> {
    let mut context = Map::new();
    context.insert("allowPrivilegeEscalation".to_owned(), json!(false));
    context.insert("capabilities".to_owned(), json!({ "drop": ["ALL"] }));
    if let Some(profile) = security_context_field(main.get("securityContext"), "seccompProfile") {
        context.insert("seccompProfile".to_owned(), profile.clone());
    }
    context
}

fn insert_identity(context: &mut Map<String, Value>, identity: Identity) {
    if let Some(user) = identity.user {
        context.insert("runAsUser".to_owned(), json!(user));
    }
    if let Some(group) = identity.group {
        context.insert("runAsGroup".to_owned(), json!(group));
    }
}
