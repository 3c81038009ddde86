//! TLS of the webhook server: where the serving certificate comes from, how it is reloaded, and
//! how the API server learns the CA.
//!
//! - [`secret`]: self-managed mode, a CA and serving certificate in a Secret, created once.
//! - [`files`]: certificate files (cert-manager), reloaded when they change.
//! - [`ca_bundle`]: keeps `caBundle` of the webhook entries equal to the self-managed CA.

pub mod ca_bundle;
pub mod certs;
pub mod files;
pub mod secret;

use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use self::certs::KeyedCertificate;

/// Errors of obtaining, storing or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Key or certificate generation failed.
    #[error("failed to generate a key or certificate: {0}")]
    Generate(rcgen::Error),
    /// A PEM document could not be parsed.
    #[error("invalid {what}: {reason}")]
    InvalidPem {
        /// Name of the parsed document.
        what: String,
        /// The parser's message.
        reason: String,
    },
    /// The certificate Secret exists but cannot be used.
    #[error(
        "the certificate Secret {secret} cannot be used: {reason}; delete it so that the webhook \
         creates a new CA and certificate, then restart every replica"
    )]
    InvalidSecret {
        /// `namespace/name` of the Secret.
        secret: String,
        /// Problem found.
        reason: String,
    },
    /// Other writers kept changing the Secret.
    #[error("the certificate Secret {secret} kept changing under concurrent writers; retry later")]
    TooManyConflicts {
        /// `namespace/name` of the Secret.
        secret: String,
    },
    /// A certificate or key file could not be read.
    #[error("failed to read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A Kubernetes API request failed.
    #[error("failed to {action}: {source}")]
    Kube {
        /// Description of the request.
        action: String,
        /// The client's error.
        source: kube::Error,
    },
    /// rustls rejected the key or the configuration.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    pub(crate) fn invalid_pem(what: &str, reason: impl ToString) -> Self {
        Self::InvalidPem {
            what: what.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Returns the ring crypto provider; the webhook never relies on a process-wide default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM certificate chain (leaf first) and its PEM private key, and checks that the key
/// belongs to the leaf.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::invalid_pem("certificate chain", error))?;
    if chain.is_empty() {
        return Err(TlsError::invalid_pem(
            "certificate chain",
            "no CERTIFICATE block found",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|error| TlsError::invalid_pem("private key", error))?;
    Ok(CertifiedKey::from_der(chain, key, &crypto_provider())?)
}

/// The serving certificate, replaceable while the server runs.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    /// Creates a resolver that serves `key`.
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: RwLock::new(Arc::new(key)),
        }
    }

    /// Serves `key` on every new TLS connection from now on.
    pub fn replace(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Builds the rustls server configuration: TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1 by ALPN, the
/// certificate from `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
