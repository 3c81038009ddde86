//! The validation policy: accepted key types and size limits.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Key types this library can decode and accept, which are also the default allow-list.
pub const SUPPORTED_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Default minimum RSA modulus size in bits.
pub const DEFAULT_MIN_RSA_BITS: u32 = 2048;

/// Default maximum line length in bytes. A 16384-bit RSA key, the largest OpenSSH decodes, needs
/// about 2,800 bytes, so the default leaves room for long comments.
pub const DEFAULT_MAX_LINE_LENGTH: usize = 8192;

/// Default maximum number of distinct keys per user.
pub const DEFAULT_MAX_KEYS: usize = 100;

/// Default maximum length of a normalised comment in bytes.
pub const DEFAULT_MAX_COMMENT_LENGTH: usize = 256;

/// Smallest RSA modulus OpenSSH accepts at all (`SSH_RSA_MINIMUM_MODULUS_SIZE` in `sshkey.h`).
pub const OPENSSH_MIN_RSA_BITS: u32 = 1024;

/// Largest RSA modulus OpenSSH decodes (`SSHBUF_MAX_BIGNUM` is 16384 / 8 bytes in `sshbuf.h`).
pub const OPENSSH_MAX_RSA_BITS: u32 = 16384;

/// Smallest accepted [`KeyPolicy::max_line_length`]: an `ssh-ed25519` line without a comment is
/// 80 bytes long, so a lower limit would reject every key.
pub const MIN_MAX_LINE_LENGTH: usize = 80;

/// Rules every key line must pass.
///
/// Deserialises from camelCase fields (`allowedTypes`, `minRsaBits`, `maxLineLength`,
/// `maxKeys`, `maxCommentLength`); missing fields take their defaults and unknown fields are an
/// error. Call [`KeyPolicy::validate`] after reading one from configuration: the parsing
/// functions accept any policy and never panic, but an invalid one can reject every key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyPolicy {
    /// Accepted key types by their OpenSSH name, a subset of [`SUPPORTED_TYPES`]. `ssh-dss`
    /// and certificate types are rejected even when listed.
    pub allowed_types: Vec<String>,
    /// Minimum RSA modulus size in bits.
    pub min_rsa_bits: u32,
    /// Maximum length of one line in bytes, without its line terminator.
    pub max_line_length: usize,
    /// Maximum number of distinct keys accepted for one user across all sources.
    pub max_keys: usize,
    /// Maximum length of a normalised comment in bytes. Longer comments are truncated at a
    /// character boundary, and 0 drops every comment.
    pub max_comment_length: usize,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            allowed_types: SUPPORTED_TYPES
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
            min_rsa_bits: DEFAULT_MIN_RSA_BITS,
            max_line_length: DEFAULT_MAX_LINE_LENGTH,
            max_keys: DEFAULT_MAX_KEYS,
            max_comment_length: DEFAULT_MAX_COMMENT_LENGTH,
        }
    }
}

impl KeyPolicy {
    /// Returns whether `key_type` is on the allow-list.
    pub fn allows(&self, key_type: &str) -> bool {
        self.allowed_types.iter().any(|allowed| allowed == key_type)
    }

    /// Checks that the policy can accept at least one key and names only supported types.
    ///
    /// # Errors
    ///
    /// Returns the first problem found as a [`PolicyError`].
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.allowed_types.is_empty() {
            return Err(PolicyError::NoAllowedTypes);
        }
        if let Some(unsupported) = self
            .allowed_types
            .iter()
            .find(|name| !SUPPORTED_TYPES.contains(&name.as_str()))
        {
            return Err(PolicyError::UnsupportedType(unsupported.clone()));
        }
        if !(OPENSSH_MIN_RSA_BITS..=OPENSSH_MAX_RSA_BITS).contains(&self.min_rsa_bits) {
            return Err(PolicyError::MinRsaBitsOutOfRange(self.min_rsa_bits));
        }
        if self.max_line_length < MIN_MAX_LINE_LENGTH {
            return Err(PolicyError::MaxLineLengthTooSmall(self.max_line_length));
        }
        if self.max_keys == 0 {
            return Err(PolicyError::NoKeysAllowed);
        }
        Ok(())
    }

    /// Returns the allow-list as a comma-separated list for messages.
    pub(crate) fn allowed_list(&self) -> String {
        self.allowed_types.join(", ")
    }
}

/// An invalid [`KeyPolicy`] setting.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// `allowedTypes` is empty.
    #[error(
        "allowedTypes is empty, so every key would be rejected: list at least one key type, \
         for example ssh-ed25519"
    )]
    NoAllowedTypes,
    /// `allowedTypes` names a type this library cannot accept.
    #[error(
        "allowedTypes contains `{0}`, which is not a supported key type: use only ssh-ed25519, \
         ssh-rsa, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, \
         sk-ssh-ed25519@openssh.com or sk-ecdsa-sha2-nistp256@openssh.com"
    )]
    UnsupportedType(String),
    /// `minRsaBits` is outside the range OpenSSH supports.
    #[error("minRsaBits is {0}: set a value from 1024 to 16384, for example 2048 or 3072")]
    MinRsaBitsOutOfRange(u32),
    /// `maxLineLength` is too small for any key line.
    #[error(
        "maxLineLength is {0} bytes, shorter than the 80-byte ssh-ed25519 line without a \
         comment: set at least 80, for example 8192"
    )]
    MaxLineLengthTooSmall(usize),
    /// `maxKeys` is 0.
    #[error("maxKeys is 0, so every key would be rejected: set at least 1, for example 100")]
    NoKeysAllowed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid() {
        assert_eq!(KeyPolicy::default().validate(), Ok(()));
    }

    #[test]
    fn default_policy_allows_supported_types() {
        let policy = KeyPolicy::default();
        for name in SUPPORTED_TYPES {
            assert!(policy.allows(name), "{name} should be allowed");
        }
        assert!(!policy.allows("ssh-dss"));
        assert!(!policy.allows("SSH-ED25519"));
    }

    #[test]
    fn validate_rejects_each_bad_setting() {
        let cases = [
            (
                KeyPolicy {
                    allowed_types: vec![],
                    ..KeyPolicy::default()
                },
                PolicyError::NoAllowedTypes,
            ),
            (
                KeyPolicy {
                    allowed_types: vec!["ssh-dss".into()],
                    ..KeyPolicy::default()
                },
                PolicyError::UnsupportedType("ssh-dss".into()),
            ),
            (
                KeyPolicy {
                    allowed_types: vec!["ssh-ed25519-cert-v01@openssh.com".into()],
                    ..KeyPolicy::default()
                },
                PolicyError::UnsupportedType("ssh-ed25519-cert-v01@openssh.com".into()),
            ),
            (
                KeyPolicy {
                    min_rsa_bits: 512,
                    ..KeyPolicy::default()
                },
                PolicyError::MinRsaBitsOutOfRange(512),
            ),
            (
                KeyPolicy {
                    min_rsa_bits: 16385,
                    ..KeyPolicy::default()
                },
                PolicyError::MinRsaBitsOutOfRange(16385),
            ),
            (
                KeyPolicy {
                    max_line_length: 79,
                    ..KeyPolicy::default()
                },
                PolicyError::MaxLineLengthTooSmall(79),
            ),
            (
                KeyPolicy {
                    max_keys: 0,
                    ..KeyPolicy::default()
                },
                PolicyError::NoKeysAllowed,
            ),
        ];
        for (policy, expected) in cases {
            assert_eq!(policy.validate(), Err(expected));
        }
    }

    #[test]
    fn policy_error_names_value_and_fix() {
        let message = PolicyError::UnsupportedType("ssh-foo".into()).to_string();
        assert!(message.contains("`ssh-foo`"), "{message}");
        assert!(message.contains("use only ssh-ed25519"), "{message}");
    }

    #[test]
    fn deserialize_fills_defaults() {
        let policy: KeyPolicy =
            serde_json::from_str(r#"{"allowedTypes": ["ssh-ed25519"], "minRsaBits": 3072}"#)
                .expect("valid policy JSON");
        assert_eq!(policy.allowed_types, vec!["ssh-ed25519".to_owned()]);
        assert_eq!(policy.min_rsa_bits, 3072);
        assert_eq!(policy.max_line_length, DEFAULT_MAX_LINE_LENGTH);
        assert_eq!(policy.max_keys, DEFAULT_MAX_KEYS);
        assert_eq!(policy.max_comment_length, DEFAULT_MAX_COMMENT_LENGTH);
    }

    #[test]
    fn deserialize_empty_object_is_default() {
        let policy: KeyPolicy = serde_json::from_str("{}").expect("empty object");
        assert_eq!(policy, KeyPolicy::default());
    }

    #[test]
    fn deserialize_rejects_unknown_field() {
        let error = serde_json::from_str::<KeyPolicy>(r#"{"minRSABits": 3072}"#)
            .expect_err("misspelt field must fail");
        assert!(error.to_string().contains("minRSABits"), "{error}");
    }
}
