//! The certificate authority that signs the short-lived user certificates of the second hop,
//! and the ephemeral keys those certificates certify.
//!
//! The sidecar trusts the CA's public key (`trusted_user_ca_keys`) and accepts a certificate
//! whose principals include its session name. Each second-hop login gets a fresh key pair, so a
//! leaked certificate is useless without the private key that never leaves the gateway's memory.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::ssh_access::Forwarding;
use rand::RngCore;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{Certificate, HashAlg, PrivateKey};

/// Data key of the CA Secret that holds the OpenSSH private key.
pub const CA_PRIVATE_KEY: &str = "ca";
/// Data key of the CA Secret that holds the public key.
pub const CA_PUBLIC_KEY: &str = "ca.pub";
/// Time a certificate is valid before its issue time, to tolerate clocks that run behind.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Errors loading the CA or signing a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The Secret's `ca` value is not an unencrypted OpenSSH private key.
    #[error("CA key in {source_name} is not an unencrypted OpenSSH private key: {reason}")]
    InvalidCaKey {
        /// Where the key came from.
        source_name: String,
        /// Parser message.
        reason: String,
    },
    /// Building or signing the certificate failed.
    #[error("signing the second-hop certificate failed: {0}")]
    Sign(String),
    /// The system clock is before 1970.
    #[error("system clock is before the Unix epoch")]
    Clock,
}

/// What a second-hop certificate says.
#[derive(Debug, Clone)]
pub struct CertificateRequest<'a> {
    /// Principal: the session name, which the sidecar requires.
    pub principal: &'a str,
    /// Key id, shown in the sidecar's log: user, session, connection id, user key fingerprint.
    pub key_id: String,
    /// Time from now until the certificate expires.
    pub validity: Duration,
    /// Forwarding kinds the SSHAccess allows; each maps to a `permit-*` extension.
    pub forwarding: &'a Forwarding,
}

/// The gateway's certificate authority.
pub struct CertificateAuthority {
    key: PrivateKey,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl CertificateAuthority {
    /// Parses the CA's OpenSSH private key; `source_name` names its origin in errors.
    pub fn from_openssh(text: &str, source_name: &str) -> Result<Self, CertificateError> {
        let key =
            PrivateKey::from_openssh(text).map_err(|error| CertificateError::InvalidCaKey {
                source_name: source_name.to_owned(),
                reason: error.to_string(),
            })?;
        if key.is_encrypted() {
            return Err(CertificateError::InvalidCaKey {
                source_name: source_name.to_owned(),
                reason: "the key is encrypted with a passphrase".to_owned(),
            });
        }
        Ok(Self { key })
    }

    /// Wraps a key, for tests.
    pub fn from_key(key: PrivateKey) -> Self {
        Self { key }
    }

    /// Returns the SHA-256 fingerprint of the CA's public key.
    pub fn fingerprint(&self) -> String {
        self.key
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }

    /// Creates a fresh ed25519 key pair and a user certificate for it.
    pub fn issue(
        &self,
        request: &CertificateRequest<'_>,
    ) -> Result<(PrivateKey, Certificate), CertificateError> {
        let key = generate_ed25519();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| CertificateError::Clock)?;
        let valid_after = now.saturating_sub(CLOCK_SKEW).as_secs();
        let valid_before = (now + request.validity).as_secs();
        let mut nonce = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sign_error =
            |error: russh::keys::ssh_key::Error| CertificateError::Sign(error.to_string());

        let mut builder = Builder::new(
            nonce.to_vec(),
            key.public_key().key_data().clone(),
            valid_after,
            valid_before,
        )
        .map_err(sign_error)?;
        builder
            .serial(rand::thread_rng().next_u64())
            .map_err(sign_error)?
            .cert_type(CertType::User)
            .map_err(sign_error)?
            .key_id(request.key_id.clone())
            .map_err(sign_error)?
            .valid_principal(request.principal)
            .map_err(sign_error)?;
        for extension in extensions(request.forwarding) {
            builder.extension(extension, "").map_err(sign_error)?;
        }
        let certificate = builder.sign(&self.key).map_err(sign_error)?;
        Ok((key, certificate))
    }
}

/// Returns the `permit-*` extensions for a certificate: a terminal always, forwarding only
/// where the SSHAccess allows it. The sidecar grants a certificate nothing it does not list.
pub fn extensions(forwarding: &Forwarding) -> Vec<&'static str> {
    let mut extensions = vec!["permit-pty"];
    if forwarding.local || forwarding.remote {
        extensions.push("permit-port-forwarding");
    }
    if forwarding.agent {
        extensions.push("permit-agent-forwarding");
    }
    extensions
}

/// Generates an ed25519 private key from the operating system's random source (through
/// `rand`'s thread-local generator, which is seeded from it).
pub fn generate_ed25519() -> PrivateKey {
    let mut seed = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut seed);
    let keypair = Ed25519Keypair::from_seed(&seed);
    seed.fill(0);
    PrivateKey::from(keypair)
}

#[cfg(test)]
mod tests {
    use russh::keys::ssh_key::LineEnding;

    use super::*;

    fn all_forwarding() -> Forwarding {
        Forwarding {
            local: true,
            remote: true,
            agent: true,
        }
    }

    #[test]
    fn certificate_names_principal_and_key_id() {
        let ca = CertificateAuthority::from_key(generate_ed25519());
        let forwarding = all_forwarding();
        let request = CertificateRequest {
            principal: "alice-0123",
            key_id: "user=u session=ns/alice-0123".to_owned(),
            validity: Duration::from_secs(300),
            forwarding: &forwarding,
        };

        let (key, certificate) = ca.issue(&request).expect("certificate");

        assert_eq!(certificate.valid_principals(), ["alice-0123".to_owned()]);
        assert_eq!(certificate.key_id(), "user=u session=ns/alice-0123");
        assert_eq!(certificate.cert_type(), CertType::User);
        assert_eq!(certificate.public_key(), key.public_key().key_data());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let ca_fingerprint = ca.key.public_key().fingerprint(HashAlg::Sha256);
        certificate
            .validate_at(now, [&ca_fingerprint])
            .expect("valid now");
        assert!(
            certificate
                .validate_at(now + 400, [&ca_fingerprint])
                .is_err()
        );
    }

    #[test]
    fn extensions_follow_forwarding() {
        let none = Forwarding {
            local: false,
            remote: false,
            agent: false,
        };
        assert_eq!(extensions(&none), ["permit-pty"]);
        let remote_only = Forwarding {
            local: false,
            remote: true,
            agent: false,
        };
        assert_eq!(
            extensions(&remote_only),
            ["permit-pty", "permit-port-forwarding"]
        );
        assert_eq!(
            extensions(&all_forwarding()),
            [
                "permit-pty",
                "permit-port-forwarding",
                "permit-agent-forwarding"
            ]
        );
    }

    #[test]
    fn every_issue_uses_a_new_key() {
        let ca = CertificateAuthority::from_key(generate_ed25519());
        let forwarding = all_forwarding();
        let request = CertificateRequest {
            principal: "s",
            key_id: "k".to_owned(),
            validity: Duration::from_secs(60),
            forwarding: &forwarding,
        };
        let (first, _) = ca.issue(&request).expect("certificate");
        let (second, _) = ca.issue(&request).expect("certificate");
        assert_ne!(first.public_key(), second.public_key());
    }

    #[test]
    fn ca_parses_openssh_text() {
        let key = generate_ed25519();
        let text = key.to_openssh(LineEnding::LF).expect("encode");
        let ca = CertificateAuthority::from_openssh(&text, "test").expect("parse");
        assert_eq!(
            ca.fingerprint(),
            key.public_key().fingerprint(HashAlg::Sha256).to_string()
        );

        let error = CertificateAuthority::from_openssh("garbage", "renku/ca").expect_err("invalid");
        assert!(error.to_string().contains("renku/ca"), "{error}");
    }
}
