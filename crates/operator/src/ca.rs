//! The gateway's SSH certificate authority: a Secret with an Ed25519 key pair, created once.
//!
//! The gateway signs short-lived user certificates with the private key; every session's SSH
//! server trusts the public key through `trusted_user_ca_keys`. An existing Secret is never
//! replaced, because a new CA key would break every running session until its keys Secret is
//! rewritten.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::config::SecretName;
use crate::error::{Categorized, ErrorCategory};
use crate::keygen::{self, GeneratedKey, KeyGenError, PublicKeyInfo};
use crate::names::{CA_PRIVATE_KEY, CA_PUBLIC_KEY, FIELD_MANAGER, MANAGED_BY_LABEL};

/// The public half of the certificate authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateAuthority {
    /// The CA public key.
    pub public_key: PublicKeyInfo,
}

impl CertificateAuthority {
    /// Returns the content of a `TrustedUserCAKeys` file that trusts this CA.
    pub fn trusted_user_ca_keys(&self) -> String {
        format!("{}\n", self.public_key.line)
    }
}

/// Failure to create or read the CA Secret.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A request for the Secret failed.
    #[error("failed to read or create the CA Secret {secret}: {source}")]
    Kubernetes {
        /// The Secret.
        secret: SecretName,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The Secret exists but contains no usable public key.
    #[error(
        "CA Secret {secret} is invalid: {reason}; fix its `ca.pub` key, or delete the Secret so \
         that the operator creates a new CA (every session then trusts the new CA only)"
    )]
    Invalid {
        /// The Secret.
        secret: SecretName,
        /// Reason the Secret cannot be used.
        reason: String,
    },
    /// A new key could not be generated.
    #[error(transparent)]
    KeyGen(#[from] KeyGenError),
}

impl Categorized for CaError {
    fn category(&self) -> ErrorCategory {
        match self {
            Self::Kubernetes { .. } => ErrorCategory::Kubernetes,
            Self::Invalid { .. } => ErrorCategory::CertificateAuthority,
            Self::KeyGen(_) => ErrorCategory::Crypto,
        }
    }
}

/// Reads the CA Secret, creating it with a new key when it does not exist.
pub async fn ensure(client: &Client, name: &SecretName) -> Result<CertificateAuthority, CaError> {
    let api = Api::<Secret>::namespaced(client.clone(), &name.namespace);
    let kubernetes = |source| CaError::Kubernetes {
        secret: name.clone(),
        source,
    };
    if let Some(secret) = api.get_opt(&name.name).await.map_err(kubernetes)? {
        return read(name, &secret);
    }
    let key = keygen::generate_ed25519("renku-ssh-ca")?;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    match api.create(&params, &build_secret(name, &key)).await {
        Ok(secret) => {
            tracing::info!(secret = %name, "created the SSH certificate authority");
            read(name, &secret)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Another replica created it between the read and the create.
            let secret = api.get(&name.name).await.map_err(kubernetes)?;
            read(name, &secret)
        }
        Err(error) => Err(kubernetes(error)),
    }
}

/// Builds the CA Secret for a new key.
pub fn build_secret(name: &SecretName, key: &GeneratedKey) -> Secret {
    let data = BTreeMap::from([
        (
            CA_PRIVATE_KEY.to_owned(),
            ByteString(key.private_openssh.as_bytes().to_vec()),
        ),
        (
            CA_PUBLIC_KEY.to_owned(),
            ByteString(format!("{}\n", key.public_openssh).into_bytes()),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.name.clone()),
            namespace: Some(name.namespace.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                FIELD_MANAGER.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Reads the public key of an existing CA Secret.
pub fn read(name: &SecretName, secret: &Secret) -> Result<CertificateAuthority, CaError> {
    let invalid = |reason: String| CaError::Invalid {
        secret: name.clone(),
        reason,
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(CA_PUBLIC_KEY))
        .ok_or_else(|| invalid(format!("it has no `{CA_PUBLIC_KEY}` key")))?;
    let text = std::str::from_utf8(&bytes.0)
        .map_err(|_| invalid(format!("`{CA_PUBLIC_KEY}` is not UTF-8 text")))?;
    let public_key = keygen::parse_public_key(text)
        .map_err(|reason| invalid(format!("`{CA_PUBLIC_KEY}` is not a public key: {reason}")))?;
    Ok(CertificateAuthority { public_key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> SecretName {
        SecretName {
            namespace: "renku".into(),
            name: "ssh-ca".into(),
        }
    }

    #[test]
    fn built_secret_reads_back() {
        let key = keygen::generate_ed25519("renku-ssh-ca").expect("generate");
        let secret = build_secret(&name(), &key);

        let ca = read(&name(), &secret).expect("valid CA Secret");

        let data = secret.data.as_ref().expect("data");
        assert!(
            data[CA_PRIVATE_KEY]
                .0
                .starts_with(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        );
        assert_eq!(ca.public_key.algorithm, "ssh-ed25519");
        assert!(key.public_openssh.starts_with(&ca.public_key.line));
        assert_eq!(
            ca.trusted_user_ca_keys(),
            format!("{}\n", ca.public_key.line)
        );
        assert_eq!(
            secret.metadata.labels.expect("labels")[MANAGED_BY_LABEL],
            FIELD_MANAGER
        );
    }

    #[test]
    fn secret_without_public_key_is_invalid() {
        let error = read(&name(), &Secret::default()).expect_err("no data");
        assert!(error.to_string().contains("renku/ssh-ca"), "{error}");
        assert!(error.to_string().contains("ca.pub"), "{error}");
        assert_eq!(error.category(), ErrorCategory::CertificateAuthority);
    }
}
