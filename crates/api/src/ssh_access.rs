//! The `SSHAccess` custom resource (`ssh.renku.io/v1alpha1`): SSH access to one running session
//! for the user who owns it.
//!
//! The schema rejects what it can check cheaply (shape, lengths, name syntax, one key source per
//! `keysFrom` entry, an immutable `sessionRef`). Everything else, above all the parsing of key
//! lines, happens in the operator, which reports each key it rejects in `status.rejectedKeys`
//! instead of failing the whole object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Maximum number of entries in `spec.authorizedKeys`.
pub const MAX_INLINE_KEYS: usize = 100;
/// Maximum length of one key line in `spec.authorizedKeys`, in characters. An OpenSSH RSA key
/// of 16384 bits, the largest `ssh-keygen` creates, takes about 2,800 characters.
pub const MAX_KEY_LINE_CHARS: usize = 16384;
/// Maximum number of entries in `spec.keysFrom`.
pub const MAX_KEY_SOURCES: usize = 16;
/// Maximum number of entries in `status.acceptedKeys`. The API server rejects a longer list, and
/// the gateway authorises logins against this list, so the operator must accept at most this
/// many keys and reject the others with a reason that names the limit.
pub const MAX_ACCEPTED_KEYS: usize = 256;
/// Maximum number of entries in `status.rejectedKeys`. The API server rejects a longer list, so
/// the operator must list only the first rejections and count the others in the message of the
/// `KeysSynced` condition.
pub const MAX_REJECTED_KEYS: usize = 64;
/// Maximum length of `status.rejectedKeys[].preview`, in characters.
pub const MAX_PREVIEW_CHARS: usize = 40;
/// Secret data key read when `keysFrom[].secretRef.key` is not set.
pub const DEFAULT_SECRET_KEY: &str = "authorized_keys";
/// Value of `source` in `acceptedKeys` and `rejectedKeys` for keys from `spec.authorizedKeys`.
pub const INLINE_KEYS_SOURCE: &str = "authorizedKeys";
/// Value of `source` in `acceptedKeys` and `rejectedKeys` for keys from the user-preferences API.
pub const USER_PREFERENCES_SOURCE: &str = "userPreferences";

/// Desired SSH access: the session, its owner, the owner's public keys and the SSH features to
/// offer.
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) repeats keys such as type_ for its own column"
)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "ssh.renku.io",
    version = "v1alpha1",
    kind = "SSHAccess",
    root = "SshAccess",
    plural = "sshaccesses",
    namespaced,
    status = "SshAccessStatus",
    derive = "PartialEq",
    shortname = "sshx",
    category = "renku",
    doc = "SSH access to one running Renku session for the user who owns it.\n\nThe operator \
           keeps one SSHAccess per SSH-enabled session, named like the session; more can be \
           created by hand. It merges the keys from authorizedKeys and keysFrom into the \
           session's key Secret and reports in status how to connect and which keys it accepted.",
    selectable = ".spec.sessionRef.name",
    selectable = ".spec.user",
    printcolumn(
        name = "Session",
        type_ = "string",
        json_path = ".spec.sessionRef.name",
        description = "Name of the AmaltheaSession this access is for."
    ),
    printcolumn(
        name = "User",
        type_ = "string",
        json_path = ".spec.user",
        description = "Identity-provider subject of the session owner."
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "Status of the Ready condition."
    ),
    printcolumn(
        name = "Keys",
        type_ = "integer",
        json_path = ".status.acceptedKeyCount",
        description = "Number of accepted public keys."
    ),
    printcolumn(
        name = "Command",
        type_ = "string",
        json_path = ".status.command",
        description = "Command that opens a shell in the session."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::kubernetes_conventions)]
pub struct SshAccessSpec {
    /// Session this access is for: an AmaltheaSession in the same namespace. Immutable, because
    /// the keys, host key and connections belong to one session. To move access to another
    /// session, create a new SSHAccess.
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "sessionRef is immutable: delete this SSHAccess and create one for the other session"
    ))]
    pub session_ref: SessionReference,

    /// Subject of the session owner in the identity provider: the `sub` claim, for Renku the
    /// Keycloak user id. Only this user may log in, with a listed key or through the device
    /// flow.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^\\\\S+$')").message(
        "user must be the identity provider subject of the session owner, without whitespace"
    ))]
    pub user: String,

    /// OpenSSH public keys, one `authorized_keys` line per entry, for example
    /// `ssh-ed25519 AAAAC3Nz... laptop`. The operator validates each line and lists every line it
    /// rejects in `status.rejectedKeys`, with the reason: a line with options before the key type
    /// (`command=`, `from=`) is rejected, so that no line can restrict or redirect the login.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_INLINE_KEYS), inner(length(min = 1, max = MAX_KEY_LINE_CHARS)))]
    #[x_kube(validation = Rule::new(
        "self.all(line, !line.contains('\\n') && !line.contains('\\r'))"
    )
    .message("each authorizedKeys entry must be a single line: put every key in its own entry"))]
    pub authorized_keys: Vec<String>,

    /// Further sources of public keys, merged with `authorizedKeys`. A change in a source reaches
    /// the running session without a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_KEY_SOURCES))]
    pub keys_from: Vec<KeySource>,

    /// Login through the identity provider's device authorization grant (RFC 8628) for a client
    /// that offers no accepted key.
    #[serde(default)]
    pub device_flow: DeviceFlow,

    /// SSH forwarding requests the session accepts.
    #[serde(default)]
    pub forwarding: Forwarding,

    /// Time at which this access ends (RFC 3339). From then on logins are rejected and open
    /// connections are closed. Unset means the access lasts as long as the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// Reference to an AmaltheaSession in the namespace of the SSHAccess.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionReference {
    /// Name of the AmaltheaSession, a DNS label. Renku names sessions with at most 25
    /// characters. The name is also the SSH user name in `ssh <name>@<gateway>`.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message(
        "sessionRef.name must be a DNS label: lowercase letters, digits and '-', \
         starting and ending with a letter or digit"
    ))]
    pub name: String,
}

/// One source of public keys. Exactly one field must be set.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.userPreferences)").message(
    "each keysFrom entry must set exactly one of secretRef or userPreferences"
))]
pub struct KeySource {
    /// Keys in `authorized_keys` format from a key of a Secret in the namespace of the
    /// SSHAccess.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeySource>,

    /// The owner's keys from the Renku user-preferences API (the keys a user adds in the Renku
    /// user settings). Takes no parameters: write `userPreferences: {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_preferences: Option<UserPreferencesKeySource>,
}

impl KeySource {
    /// Creates a source that reads key `key` of Secret `name`.
    pub fn secret(name: impl Into<String>, key: impl Into<String>) -> Self {
        let secret = SecretKeySource {
            name: name.into(),
            key: key.into(),
        };
        Self {
            secret_ref: Some(secret),
            user_preferences: None,
        }
    }

    /// Creates a source that reads the owner's keys from the user-preferences API.
    pub fn user_preferences() -> Self {
        Self {
            secret_ref: None,
            user_preferences: Some(UserPreferencesKeySource::default()),
        }
    }

    /// Returns the label that `acceptedKeys[].source` and `rejectedKeys[].source` use for this
    /// source: `secret:<name>/<key>` or `userPreferences`, or `None` for an entry that sets
    /// neither. An entry that sets both is labelled by its Secret. The schema rejects both cases.
    pub fn label(&self) -> Option<String> {
        match (&self.secret_ref, &self.user_preferences) {
            (Some(secret), _) => Some(format!("secret:{}/{}", secret.name, secret.key)),
            (None, Some(_)) => Some(USER_PREFERENCES_SOURCE.to_owned()),
            (None, None) => None,
        }
    }
}

/// A key of a Secret that contains public keys in `authorized_keys` format, one key per line.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySource {
    /// Name of the Secret, in the namespace of the SSHAccess.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')"
    )
    .message("secretRef.name must be a Secret name: a lowercase DNS subdomain"))]
    pub name: String,

    /// Key within the Secret's data.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message(
        "secretRef.key must be a Secret data key: letters, digits, '-', '_' and '.'"
    ))]
    pub key: String,
}

fn default_secret_key() -> String {
    DEFAULT_SECRET_KEY.to_owned()
}

/// Selects the owner's keys from the Renku user-preferences API. It has no fields yet.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPreferencesKeySource {}

/// Device-flow login settings.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceFlow {
    /// Whether the device flow is offered: the SSH client shows a URL and a code, and the login
    /// succeeds once the owner approves it in the browser.
    #[serde(default = "enabled")]
    pub enabled: bool,
}

impl Default for DeviceFlow {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// SSH forwarding switches. Each one that is `false` makes the session reject that request.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forwarding {
    /// Local port forwarding (`ssh -L`, channel type `direct-tcpip`), including to ports on the
    /// session's own `localhost`. IDEs such as VS Code Remote-SSH need it.
    #[serde(default = "enabled")]
    pub local: bool,

    /// Remote port forwarding (`ssh -R`, global request `tcpip-forward`).
    #[serde(default = "enabled")]
    pub remote: bool,

    /// Agent forwarding (`ssh -A`, channel request `auth-agent-req@openssh.com`).
    #[serde(default = "enabled")]
    pub agent: bool,
}

impl Default for Forwarding {
    fn default() -> Self {
        Self {
            local: true,
            remote: true,
            agent: true,
        }
    }
}

fn enabled() -> bool {
    true
}

/// Observed state of an SSHAccess, written by the operator.
///
/// Lists are always serialised, also when empty, so that a merge patch of the status clears
/// entries that went away.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::kubernetes_conventions)]
pub struct SshAccessStatus {
    /// `metadata.generation` of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Standard conditions: `Ready`, `KeysSynced`, `SidecarInjected` and `Routable`, each with a
    /// reason and a message.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Address of the SSH gateway as `host:port`, for example `ssh.renku.example:22`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// Command that opens a shell in the session, ready to paste, for example
    /// `ssh my-session-0123456789ab@ssh.renku.example`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,

    /// Host key of the session's SSH server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<HostKey>,

    /// Keys that may log in, from every source.
    #[serde(default)]
    #[schemars(length(max = MAX_ACCEPTED_KEYS))]
    pub accepted_keys: Vec<AcceptedKey>,

    /// Number of entries in `acceptedKeys`, for the `Keys` printer column, which cannot count a
    /// list itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub accepted_key_count: Option<i32>,

    /// Key lines the operator rejected, with the reason. When there are more rejections than the
    /// list may hold, the message of the `KeysSynced` condition counts the rest.
    #[serde(default)]
    #[schemars(length(max = MAX_REJECTED_KEYS))]
    pub rejected_keys: Vec<RejectedKey>,
}

impl SshAccessStatus {
    /// Replaces `acceptedKeys` and sets `acceptedKeyCount` to match, so that the `Keys` printer
    /// column stays right.
    pub fn set_accepted_keys(&mut self, keys: Vec<AcceptedKey>) {
        // The schema caps the list far below i32::MAX, so saturating never changes a real count.
        self.accepted_key_count = Some(i32::try_from(keys.len()).unwrap_or(i32::MAX));
        self.accepted_keys = keys;
    }
}

/// Host key of the session's SSH server, for pinning it on the client.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostKey {
    /// SHA-256 fingerprint as `ssh-keygen -l` prints it, for example `SHA256:nThbg6kX...`.
    pub fingerprint: String,

    /// Line for `~/.ssh/known_hosts` that trusts this host key for the session's SSH address.
    pub known_hosts_line: String,
}

/// A public key that may log in.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedKey {
    /// SHA-256 fingerprint as `ssh-keygen -l` prints it: `SHA256:` and unpadded base64.
    pub fingerprint: String,

    /// Key type, for example `ssh-ed25519` or `ecdsa-sha2-nistp256`.
    pub key_type: String,

    /// Comment after the key, usually naming the key's owner or machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,

    /// Source of the key: `authorizedKeys`, `secret:<name>/<key>` or `userPreferences`.
    pub source: String,
}

/// A key line the operator rejected.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedKey {
    /// Source of the line: `authorizedKeys`, `secret:<name>/<key>` or `userPreferences`.
    pub source: String,

    /// 1-based position of the line within its source: the entry number in `authorizedKeys`,
    /// the line number in a Secret, the item number in the user-preferences response.
    #[schemars(range(min = 1))]
    pub line: i32,

    /// Reason for the rejection, with what to change in the line.
    pub reason: String,

    /// Start of the rejected line, to help find it. Control characters are shown as `?`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_PREVIEW_CHARS))]
    pub preview: Option<String>,
}

impl RejectedKey {
    /// Returns the value for `preview`: at most [`MAX_PREVIEW_CHARS`] characters of `line`,
    /// with control characters replaced by `?`, and cut with a final `…` when longer.
    pub fn preview_of(line: &str) -> String {
        let printable = |c: char| if c.is_control() { '?' } else { c };
        if line.chars().count() <= MAX_PREVIEW_CHARS {
            return line.chars().map(printable).collect();
        }
        let mut preview: String = line
            .chars()
            .take(MAX_PREVIEW_CHARS - 1)
            .map(printable)
            .collect();
        preview.push('…');
        preview
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn minimal_spec() -> SshAccessSpec {
        serde_json::from_value(json!({
            "sessionRef": { "name": "alice-0123456789ab" },
            "user": "4f7a6b1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b",
        }))
        .expect("minimal spec deserialises")
    }

    #[test]
    fn spec_defaults_when_omitted() {
        let spec = minimal_spec();

        assert!(spec.authorized_keys.is_empty());
        assert!(spec.keys_from.is_empty());
        assert!(spec.device_flow.enabled);
        assert_eq!(
            spec.forwarding,
            Forwarding {
                local: true,
                remote: true,
                agent: true
            }
        );
        assert!(spec.expires_at.is_none());
    }

    #[test]
    fn partial_objects_default_missing_fields() {
        let spec: SshAccessSpec = serde_json::from_value(json!({
            "sessionRef": { "name": "s" },
            "user": "u",
            "deviceFlow": {},
            "forwarding": { "agent": false },
            "keysFrom": [{ "secretRef": { "name": "keys" } }],
        }))
        .expect("spec deserialises");

        assert!(spec.device_flow.enabled);
        assert_eq!(
            spec.forwarding,
            Forwarding {
                local: true,
                remote: true,
                agent: false
            }
        );
        assert_eq!(
            spec.keys_from,
            [KeySource::secret("keys", DEFAULT_SECRET_KEY)]
        );
    }

    #[test]
    fn spec_serialises_camel_case() {
        let mut spec = minimal_spec();
        spec.authorized_keys = vec!["ssh-ed25519 AAAA laptop".to_owned()];
        spec.keys_from = vec![
            KeySource::secret("keys", "extra"),
            KeySource::user_preferences(),
        ];
        spec.expires_at = Some(Time(
            "2030-01-02T03:04:05Z".parse().expect("valid timestamp"),
        ));

        let value = serde_json::to_value(&spec).expect("spec serialises");

        assert_eq!(
            value,
            json!({
                "sessionRef": { "name": "alice-0123456789ab" },
                "user": "4f7a6b1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b",
                "authorizedKeys": ["ssh-ed25519 AAAA laptop"],
                "keysFrom": [
                    { "secretRef": { "name": "keys", "key": "extra" } },
                    { "userPreferences": {} },
                ],
                "deviceFlow": { "enabled": true },
                "forwarding": { "local": true, "remote": true, "agent": true },
                "expiresAt": "2030-01-02T03:04:05Z",
            })
        );
    }

    #[test]
    fn empty_spec_lists_are_omitted() {
        let value = serde_json::to_value(minimal_spec()).expect("spec serialises");

        assert!(value.get("authorizedKeys").is_none());
        assert!(value.get("keysFrom").is_none());
        assert!(value.get("expiresAt").is_none());
    }

    #[test]
    fn status_serialises_camel_case() {
        let mut status = SshAccessStatus {
            observed_generation: Some(3),
            endpoint: Some("ssh.renku.example:22".to_owned()),
            command: Some("ssh alice-0123456789ab@ssh.renku.example".to_owned()),
            host_key: Some(HostKey {
                fingerprint: "SHA256:abc".to_owned(),
                known_hosts_line: "ssh.renku.example ssh-ed25519 AAAA".to_owned(),
            }),
            rejected_keys: vec![RejectedKey {
                source: INLINE_KEYS_SOURCE.to_owned(),
                line: 2,
                reason: "unknown key type".to_owned(),
                preview: Some("ssh-foo AAAA".to_owned()),
            }],
            ..SshAccessStatus::default()
        };
        status.set_accepted_keys(vec![AcceptedKey {
            fingerprint: "SHA256:def".to_owned(),
            key_type: "ssh-ed25519".to_owned(),
            comment: None,
            source: USER_PREFERENCES_SOURCE.to_owned(),
        }]);

        let value = serde_json::to_value(&status).expect("status serialises");

        assert_eq!(
            value,
            json!({
                "observedGeneration": 3,
                "conditions": [],
                "endpoint": "ssh.renku.example:22",
                "command": "ssh alice-0123456789ab@ssh.renku.example",
                "hostKey": {
                    "fingerprint": "SHA256:abc",
                    "knownHostsLine": "ssh.renku.example ssh-ed25519 AAAA",
                },
                "acceptedKeys": [{
                    "fingerprint": "SHA256:def",
                    "keyType": "ssh-ed25519",
                    "source": "userPreferences",
                }],
                "acceptedKeyCount": 1,
                "rejectedKeys": [{
                    "source": "authorizedKeys",
                    "line": 2,
                    "reason": "unknown key type",
                    "preview": "ssh-foo AAAA",
                }],
            })
        );
    }

    #[test]
    fn set_accepted_keys_updates_count() {
        let key = AcceptedKey {
            fingerprint: "SHA256:x".to_owned(),
            key_type: "ssh-ed25519".to_owned(),
            comment: Some("laptop".to_owned()),
            source: INLINE_KEYS_SOURCE.to_owned(),
        };
        let mut status = SshAccessStatus::default();

        status.set_accepted_keys(vec![key.clone(), key]);
        assert_eq!(status.accepted_key_count, Some(2));

        status.set_accepted_keys(Vec::new());
        assert_eq!(status.accepted_key_count, Some(0));
        assert!(status.accepted_keys.is_empty());
    }

    #[test]
    fn key_source_labels() {
        let secret = KeySource::secret("team-keys", "authorized_keys");
        let empty = KeySource {
            secret_ref: None,
            user_preferences: None,
        };

        assert_eq!(
            secret.label().as_deref(),
            Some("secret:team-keys/authorized_keys")
        );
        assert_eq!(
            KeySource::user_preferences().label().as_deref(),
            Some(USER_PREFERENCES_SOURCE)
        );
        assert_eq!(empty.label(), None);
    }

    #[test]
    fn preview_keeps_short_lines() {
        assert_eq!(
            RejectedKey::preview_of("ssh-ed25519 AAAA"),
            "ssh-ed25519 AAAA"
        );
        let exactly_max = "a".repeat(MAX_PREVIEW_CHARS);
        assert_eq!(RejectedKey::preview_of(&exactly_max), exactly_max);
    }

    #[test]
    fn preview_cuts_long_lines() {
        let line = format!("ssh-rsa {}", "A".repeat(500));

        let preview = RejectedKey::preview_of(&line);

        assert_eq!(preview.chars().count(), MAX_PREVIEW_CHARS);
        assert!(preview.starts_with("ssh-rsa AAAA"));
        assert!(preview.ends_with('…'));
    }

    #[test]
    fn preview_counts_characters_not_bytes() {
        let line = "ü".repeat(100);

        let preview = RejectedKey::preview_of(&line);

        assert_eq!(preview.chars().count(), MAX_PREVIEW_CHARS);
        assert!(preview.len() > MAX_PREVIEW_CHARS);
    }

    #[test]
    fn preview_masks_control_characters() {
        assert_eq!(
            RejectedKey::preview_of("ssh-ed25519\tAAAA\u{1b}[31m"),
            "ssh-ed25519?AAAA?[31m"
        );
    }
}
