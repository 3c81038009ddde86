//! Names, labels and annotations the operator reads and writes.

/// Field manager of every server-side apply, and the `app.kubernetes.io/managed-by` value.
pub const FIELD_MANAGER: &str = "renku-ssh-operator";

/// Standard label that marks objects this operator created.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Label on every object made for a session, whose value is the session name.
pub const SESSION_LABEL: &str = "ssh.renku.io/session";

/// Annotation on an AmaltheaSession that enables SSH under the `annotated` policy.
pub const ENABLED_ANNOTATION: &str = "ssh.renku.io/enabled";

/// Label on an AmaltheaSession with the identity-provider subject of its owner, set by Renku.
pub const SAFE_USERNAME_LABEL: &str = "renku.io/safe-username";

/// Name of the SSH server container that the admission webhook adds to session pods.
pub const SIDECAR_CONTAINER: &str = "renku-ssh";

/// Port the SSH sidecar listens on inside the session pod.
pub const SIDECAR_PORT: i32 = 2222;

/// Port of the per-session Service, which the gateway connects to.
pub const SERVICE_PORT: i32 = 22;

/// Data key of the keys Secret with the merged `authorized_keys` file.
pub const AUTHORIZED_KEYS_KEY: &str = "authorized_keys";

/// Data key of the keys Secret with the gateway CA's public key, in `TrustedUserCAKeys` format.
pub const TRUSTED_USER_CA_KEYS_KEY: &str = "trusted_user_ca_keys";

/// Data key of the host key Secret with the OpenSSH private key.
pub const HOST_KEY_PRIVATE_KEY: &str = "ssh_host_ed25519_key";

/// Data key of the host key Secret with the public key line.
pub const HOST_KEY_PUBLIC_KEY: &str = "ssh_host_ed25519_key.pub";

/// Data key of the CA Secret with the OpenSSH private key.
pub const CA_PRIVATE_KEY: &str = "ca";

/// Data key of the CA Secret with the public key line.
pub const CA_PUBLIC_KEY: &str = "ca.pub";

/// Longest session name for which every derived name is valid: the Service `<session>-ssh`
/// must be a DNS label of at most 63 characters.
pub const MAX_SESSION_NAME_LENGTH: usize = 63 - "-ssh".len();

/// Names of the objects the operator keeps for one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildNames {
    /// The session name, also the SSH user name at the gateway.
    pub session: String,
    /// Secret with `authorized_keys` and `trusted_user_ca_keys`.
    pub keys_secret: String,
    /// Secret with the session's SSH host key.
    pub host_key_secret: String,
    /// Service in front of the sidecar.
    pub service: String,
    /// NetworkPolicy that admits the gateway.
    pub network_policy: String,
}

impl ChildNames {
    /// Derives the child names from the session name.
    pub fn for_session(session: &str) -> Self {
        Self {
            session: session.to_owned(),
            keys_secret: format!("{session}-ssh-keys"),
            host_key_secret: format!("{session}-ssh-hostkey"),
            service: format!("{session}-ssh"),
            network_policy: format!("{session}-ssh"),
        }
    }
}

/// Returns the name of the session's pod: amalthea runs one StatefulSet replica, `<session>-0`.
pub fn session_pod_name(session: &str) -> String {
    format!("{session}-0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_names_follow_session() {
        let names = ChildNames::for_session("alice-1234");

        assert_eq!(names.keys_secret, "alice-1234-ssh-keys");
        assert_eq!(names.host_key_secret, "alice-1234-ssh-hostkey");
        assert_eq!(names.service, "alice-1234-ssh");
        assert_eq!(names.network_policy, "alice-1234-ssh");
        assert_eq!(session_pod_name("alice-1234"), "alice-1234-0");
    }

    #[test]
    fn longest_session_name_fits_service_name() {
        let session = "a".repeat(MAX_SESSION_NAME_LENGTH);
        assert_eq!(ChildNames::for_session(&session).service.len(), 63);
    }
}
