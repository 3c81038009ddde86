//! Ed25519 key generation for the certificate authority and the session host keys, and
//! reading of the public halves back from Secrets.

use std::fmt;

use authkeys::{AuthorizedKey, KeyPolicy};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use zeroize::Zeroizing;

/// A freshly generated key pair in OpenSSH encoding. `Debug` never shows the private key.
pub struct GeneratedKey {
    /// The private key as an `-----BEGIN OPENSSH PRIVATE KEY-----` block.
    pub private_openssh: Zeroizing<String>,
    /// The public key line, `ssh-ed25519 AAAA... comment`.
    pub public_openssh: String,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("GeneratedKey")
            .field("private_openssh", &"<redacted>")
            .field("public_openssh", &self.public_openssh)
            .finish()
    }
}

/// Failure to generate or encode a key.
#[derive(Debug, thiserror::Error)]
#[error("failed to encode a new Ed25519 key: {0}")]
pub struct KeyGenError(String);

/// Generates an Ed25519 key pair from the operating system's random source.
pub fn generate_ed25519(comment: &str) -> Result<GeneratedKey, KeyGenError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(seed.as_mut());
    let keypair = Ed25519Keypair::from_seed(&seed);
    let mut private_key = PrivateKey::from(keypair);
    private_key.set_comment(comment);
    let private_openssh = private_key
        .to_openssh(LineEnding::LF)
        .map_err(|error| KeyGenError(error.to_string()))?;
    let public_openssh = private_key
        .public_key()
        .to_openssh()
        .map_err(|error| KeyGenError(error.to_string()))?;
    Ok(GeneratedKey {
        private_openssh,
        public_openssh,
    })
}

/// A public key read from a Secret: the normalised line and its fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyInfo {
    /// Key type, for example `ssh-ed25519`.
    pub algorithm: String,
    /// `type base64`, without a comment.
    pub line: String,
    /// `SHA256:` fingerprint, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

/// Parses one public key line, accepting any type on the default allow-list.
pub fn parse_public_key(text: &str) -> Result<PublicKeyInfo, String> {
    let line = text.trim();
    let key: AuthorizedKey = authkeys::parse_line(line, &KeyPolicy::default())
        .map_err(|reason| reason.to_string())?
        .ok_or_else(|| "it contains no key line".to_owned())?;
    Ok(PublicKeyInfo {
        algorithm: key.algorithm().to_owned(),
        line: format!("{} {}", key.algorithm(), STANDARD.encode(key.blob())),
        fingerprint: key.fingerprint().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips() {
        let key = generate_ed25519("host-key").expect("generate");

        assert!(
            key.private_openssh
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
        );
        assert!(key.public_openssh.starts_with("ssh-ed25519 AAAA"));
        assert!(key.public_openssh.ends_with(" host-key"));
        let private = PrivateKey::from_openssh(key.private_openssh.as_bytes()).expect("parse");
        let public = private.public_key().to_openssh().expect("encode");
        assert_eq!(public, key.public_openssh);
    }

    #[test]
    fn generated_keys_differ() {
        let first = generate_ed25519("a").expect("generate");
        let second = generate_ed25519("a").expect("generate");
        assert_ne!(first.public_openssh, second.public_openssh);
    }

    #[test]
    fn debug_hides_private_key() {
        let key = generate_ed25519("a").expect("generate");
        let debug = format!("{key:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        assert!(debug.contains("ssh-ed25519"), "{debug}");
    }

    #[test]
    fn public_key_info_drops_comment() {
        let key = generate_ed25519("some comment").expect("generate");

        let info = parse_public_key(&format!("{}\n", key.public_openssh)).expect("parse");

        assert_eq!(info.algorithm, "ssh-ed25519");
        assert!(!info.line.contains("comment"), "{}", info.line);
        assert_eq!(info.line.split(' ').count(), 2);
        assert!(info.fingerprint.starts_with("SHA256:"));
    }

    #[test]
    fn public_key_info_rejects_garbage() {
        assert!(parse_public_key("").is_err());
        assert!(parse_public_key("ssh-ed25519 not-base64!").is_err());
    }
}
