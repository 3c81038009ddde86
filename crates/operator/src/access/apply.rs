//! Apply step: server-side apply of the desired children under the field manager
//! `renku-ssh-operator`. Applying an unchanged object is a no-op on the API server, so every
//! reconcile applies everything and existing objects keep their UID.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::build::Desired;
use crate::error::{Categorized, ErrorCategory};
use crate::names::FIELD_MANAGER;

/// A failed apply.
#[derive(Debug, thiserror::Error)]
#[error("failed to apply {kind} {namespace}/{name}: {source}")]
pub struct ApplyError {
    kind: &'static str,
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

impl Categorized for ApplyError {
    fn category(&self) -> ErrorCategory {
        match &self.source {
            kube::Error::Api(status) if status.code == 409 => ErrorCategory::Conflict,
            _ => ErrorCategory::Kubernetes,
        }
    }
}

/// Returns the parameters of every apply: the operator's field manager, forcing ownership of
/// the fields it sets, because it is the only writer those fields should have.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies one namespaced object and returns it as stored.
pub async fn apply<K>(client: &Client, kind: &'static str, object: &K) -> Result<K, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    let name = object.meta().name.clone().unwrap_or_default();
    let api = Api::<K>::namespaced(client.clone(), &namespace);
    api.patch(&name, &apply_params(), &Patch::Apply(object))
        .await
        .map_err(|source| ApplyError {
            kind,
            namespace,
            name,
            source,
        })
}

/// Applies every child in `desired`, and returns the stored keys Secret.
pub async fn apply_all(
    client: &Client,
    desired: &Desired,
) -> Result<k8s_openapi::api::core::v1::Secret, ApplyError> {
    let (secret, _, _) = tokio::try_join!(
        apply(client, "Secret", &desired.keys_secret),
        apply(client, "Service", &desired.service),
        apply(client, "NetworkPolicy", &desired.network_policy),
    )?;
    Ok(secret)
}
