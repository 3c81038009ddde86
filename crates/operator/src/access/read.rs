//! Read step: the session, its pod, the current keys Secret and the content of every key
//! source. Nothing here writes.

use std::sync::Arc;

use api::ssh_access::{INLINE_KEYS_SOURCE, USER_PREFERENCES_SOURCE};
use api::{AmaltheaSession, SshAccess};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client};

use super::validate::ValidAccess;
use crate::error::{Categorized, ErrorCategory};
use crate::names::{AUTHORIZED_KEYS_KEY, session_pod_name};
use crate::userprefs::UserKeyRegistry;

/// Kind of key source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// `spec.authorizedKeys`.
    Inline,
    /// `spec.keysFrom[].secretRef`.
    Secret,
    /// `spec.keysFrom[].userPreferences`.
    UserPreferences,
}

/// Content of a key source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceContent {
    /// An `authorized_keys` file, such as a Secret's data.
    Text(String),
    /// Separate key lines, such as `spec.authorizedKeys`.
    Values(Vec<String>),
}

/// One key source as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInput {
    /// Label, as in `acceptedKeys[].source`.
    pub label: String,
    /// Kind of source.
    pub kind: SourceKind,
    /// Best content available: the current one, or the last good one of a failing source
    /// when it is cached; `None` when the source failed and nothing is cached.
    pub content: Option<SourceContent>,
    /// Why the source could not be read now.
    pub error: Option<String>,
}

/// Everything the later steps need from the cluster.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The session, if it exists.
    pub session: Option<AmaltheaSession>,
    /// The session's pod, if it exists.
    pub pod: Option<Pod>,
    /// The current keys Secret, if it exists.
    pub keys_secret: Option<Secret>,
    /// The key sources, inline first, then `keysFrom` in order. Empty when the access expired.
    pub sources: Vec<SourceInput>,
}

impl Observed {
    /// Returns the current `authorized_keys` of the keys Secret.
    pub fn current_authorized_keys(&self) -> Option<&str> {
        let data = self.keys_secret.as_ref()?.data.as_ref()?;
        std::str::from_utf8(&data.get(AUTHORIZED_KEYS_KEY)?.0).ok()
    }
}

/// A failed read of an object the reconcile cannot do without.
#[derive(Debug, thiserror::Error)]
#[error("failed to read {kind} {namespace}/{name}: {source}")]
pub struct ReadError {
    kind: &'static str,
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

impl Categorized for ReadError {
    fn category(&self) -> ErrorCategory {
        ErrorCategory::Kubernetes
    }
}

/// Reads the session, pod and keys Secret of `valid`, and the key sources unless `expired`.
pub async fn observe(
    client: &Client,
    registry: Option<&Arc<UserKeyRegistry>>,
    access: &SshAccess,
    valid: &ValidAccess,
    expired: bool,
) -> Result<Observed, ReadError> {
    let namespace = valid.namespace.as_str();
    let names = &valid.names;
    let sessions = Api::<AmaltheaSession>::namespaced(client.clone(), namespace);
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let pod_name = session_pod_name(&names.session);
    let (session, pod, keys_secret) = tokio::try_join!(
        get_opt(&sessions, "AmaltheaSession", namespace, &names.session),
        get_opt(&pods, "Pod", namespace, &pod_name),
        get_opt(&secrets, "Secret", namespace, &names.keys_secret),
    )?;
    let sources = if expired {
        if let Some(registry) = registry {
            registry.unsubscribe(&ObjectRef::from_obj(access));
        }
        Vec::new()
    } else {
        read_sources(&secrets, registry, access).await
    };
    Ok(Observed {
        session,
        pod,
        keys_secret,
        sources,
    })
}

async fn get_opt<K>(
    api: &Api<K>,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, ReadError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.map_err(|source| ReadError {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })
}

/// Reads every key source. A failure becomes the source's `error`, never a reconcile error,
/// because the status reports it and the last good keys stay in use.
async fn read_sources(
    secrets: &Api<Secret>,
    registry: Option<&Arc<UserKeyRegistry>>,
    access: &SshAccess,
) -> Vec<SourceInput> {
    let mut inputs = vec![SourceInput {
        label: INLINE_KEYS_SOURCE.to_owned(),
        kind: SourceKind::Inline,
        content: Some(SourceContent::Values(access.spec.authorized_keys.clone())),
        error: None,
    }];
    let mut reads_user_preferences = false;
    for source in &access.spec.keys_from {
        if let Some(secret_ref) = &source.secret_ref {
            let label = source.label().unwrap_or_default();
            let input = match read_secret_key(secrets, &secret_ref.name, &secret_ref.key).await {
                Ok(text) => SourceInput {
                    label,
                    kind: SourceKind::Secret,
                    content: Some(SourceContent::Text(text)),
                    error: None,
                },
                Err(error) => SourceInput {
                    label,
                    kind: SourceKind::Secret,
                    content: None,
                    error: Some(error),
                },
            };
            inputs.push(input);
        } else if source.user_preferences.is_some() {
            reads_user_preferences = true;
            inputs.push(read_user_preferences(registry, access).await);
        }
    }
    if !reads_user_preferences && let Some(registry) = registry {
        registry.unsubscribe(&ObjectRef::from_obj(access));
    }
    inputs
}

async fn read_secret_key(secrets: &Api<Secret>, name: &str, key: &str) -> Result<String, String> {
    let secret = match secrets.get_opt(name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => return Err(format!("Secret {name:?} not found")),
        Err(error) => return Err(format!("failed to read Secret {name:?}: {error}")),
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .ok_or_else(|| format!("Secret {name:?} has no key {key:?}"))?;
    String::from_utf8(value.0.clone())
        .map_err(|_| format!("key {key:?} of Secret {name:?} is not UTF-8 text"))
}

async fn read_user_preferences(
    registry: Option<&Arc<UserKeyRegistry>>,
    access: &SshAccess,
) -> SourceInput {
    let label = USER_PREFERENCES_SOURCE.to_owned();
    let kind = SourceKind::UserPreferences;
    let Some(registry) = registry else {
        let error = "the operator has no user-preferences API configured (--user-preferences-url)";
        return SourceInput {
            label,
            kind,
            content: None,
            error: Some(error.to_owned()),
        };
    };
    let snapshot = registry
        .keys_for(ObjectRef::from_obj(access), &access.spec.user)
        .await;
    SourceInput {
        label,
        kind,
        content: snapshot.keys.map(SourceContent::Values),
        error: snapshot.error.map(|error| error.to_string()),
    }
}
