//! The session's SSH host key: a Secret created once and then only read.
//!
//! Unlike the other children it is never applied, because a second key would change the
//! fingerprint that every user pinned in `known_hosts`. The private key never leaves the
//! Secret: only the public half is read back, and nothing here logs key material.

use api::SshAccess;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};

use super::build;
use super::validate::ValidAccess;
use crate::error::{Categorized, ErrorCategory};
use crate::keygen::{self, KeyGenError, PublicKeyInfo};
use crate::names::{FIELD_MANAGER, HOST_KEY_PUBLIC_KEY};

/// Outcome of [`ensure`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKey {
    /// The Secret holds a usable key.
    Ready(PublicKeyInfo),
    /// The Secret exists but cannot be used; the message says why and how to fix it.
    Invalid(String),
    /// The Secret belongs to another SSHAccess.
    OwnedByOther(String),
}

/// Failure to read or create the host key Secret.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// A request failed.
    #[error("failed to read or create the host key Secret {namespace}/{name}: {source}")]
    Kubernetes {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A new key could not be generated.
    #[error(transparent)]
    KeyGen(#[from] KeyGenError),
}

impl Categorized for HostKeyError {
    fn category(&self) -> ErrorCategory {
        match self {
            Self::Kubernetes { .. } => ErrorCategory::Kubernetes,
            Self::KeyGen(_) => ErrorCategory::Crypto,
        }
    }
}

/// Reads the host key Secret of `valid`, creating it with a new key when it does not exist.
pub async fn ensure(
    client: &Client,
    access: &SshAccess,
    valid: &ValidAccess,
) -> Result<HostKey, HostKeyError> {
    let api = Api::<Secret>::namespaced(client.clone(), &valid.namespace);
    let name = &valid.names.host_key_secret;
    let kubernetes = |source| HostKeyError::Kubernetes {
        namespace: valid.namespace.clone(),
        name: name.clone(),
        source,
    };
    if let Some(secret) = api.get_opt(name).await.map_err(kubernetes)? {
        return Ok(inspect(access, valid, &secret));
    }
    let key = keygen::generate_ed25519(&valid.names.session)?;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    match api
        .create(&params, &build::host_key_secret(valid, &key))
        .await
    {
        Ok(secret) => {
            tracing::info!(secret = %name, "created the session's SSH host key");
            Ok(inspect(access, valid, &secret))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = api.get(name).await.map_err(kubernetes)?;
            Ok(inspect(access, valid, &secret))
        }
        Err(error) => Err(kubernetes(error)),
    }
}

/// Checks the owner and reads the public key of an existing host key Secret.
pub fn inspect(access: &SshAccess, valid: &ValidAccess, secret: &Secret) -> HostKey {
    let name = &valid.names.host_key_secret;
    if let Some(other) = other_controller(access, secret) {
        return HostKey::OwnedByOther(format!(
            "Secret {name} belongs to {other}, which serves the same session"
        ));
    }
    let Some(bytes) = secret
        .data
        .as_ref()
        .and_then(|data| data.get(HOST_KEY_PUBLIC_KEY))
    else {
        return HostKey::Invalid(format!(
            "Secret {name} has no `{HOST_KEY_PUBLIC_KEY}` key: delete the Secret to generate a \
             new host key (users must then remove the old one from known_hosts)"
        ));
    };
    let parsed = std::str::from_utf8(&bytes.0)
        .map_err(|_| "it is not UTF-8 text".to_owned())
        .and_then(keygen::parse_public_key);
    match parsed {
        Ok(info) => HostKey::Ready(info),
        Err(reason) => HostKey::Invalid(format!(
            "`{HOST_KEY_PUBLIC_KEY}` in Secret {name} is not a public key ({reason}): delete the \
             Secret to generate a new host key (users must then remove the old one from \
             known_hosts)"
        )),
    }
}

/// Returns `Kind/name` of the controller of `object` when it is not `access`.
pub fn other_controller(access: &SshAccess, object: &impl kube::Resource) -> Option<String> {
    let uid = access.metadata.uid.as_deref()?;
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true))
        .filter(|owner| owner.uid != uid)
        .map(|owner| format!("{} {}", owner.kind, owner.name))
}
