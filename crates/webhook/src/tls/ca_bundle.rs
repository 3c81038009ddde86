//! Keeps `clientConfig.caBundle` of this webhook's entries in the MutatingWebhookConfiguration
//! equal to the self-managed CA.
//!
//! A watch on the one configuration reacts when someone (for example a Helm upgrade) applies it
//! with an empty or stale bundle. The JSON patch guards each index with a `test` of the entry's
//! name. An entry list that changed between read and write therefore makes the patch fail
//! instead of writing to another webhook's entry. Entries with other names are never modified.

use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, TestOperation};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Patch as KubePatch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::Value;

use crate::config::WebhookConfigurationRef;

/// Delay before retrying a failed patch when no new event arrives.
const RETRY_DELAY: Duration = Duration::from_secs(10);

/// Returns the JSON patch that sets `caBundle` to `ca_pem` in every entry named
/// `webhook_name`, or `None` when they all have it already.
pub fn ca_bundle_patch(
    configuration: &MutatingWebhookConfiguration,
    webhook_name: &str,
    ca_pem: &[u8],
) -> Option<Patch> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut operations = Vec::new();
    let webhooks = configuration.webhooks.as_deref().unwrap_or_default();
    for (index, webhook) in webhooks.iter().enumerate() {
        if webhook.name != webhook_name {
            continue;
        }
        let current = webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|bundle| bundle.0.as_slice());
        if current == Some(ca_pem) {
            continue;
        }
        let index = index.to_string();
        operations.push(PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["webhooks", &index, "name"]),
            value: Value::String(webhook_name.to_owned()),
        }));
        operations.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["webhooks", &index, "clientConfig", "caBundle"]),
            value: Value::String(encoded.clone()),
        }));
    }
    (!operations.is_empty()).then_some(Patch(operations))
}

/// Patches `caBundle` whenever the configuration named in `reference` lacks the CA in `ca_pem`,
/// also after `ca_pem` changes, until the future is dropped.
pub async fn keep_in_sync(
    client: Client,
    reference: WebhookConfigurationRef,
    mut ca_pem: tokio::sync::watch::Receiver<Vec<u8>>,
) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let selector = format!("metadata.name={}", reference.name);
    let stream = watcher::watcher(api.clone(), watcher::Config::default().fields(&selector))
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    let mut retry_at: Option<tokio::time::Instant> = None;
    match api.get_opt(&reference.name).await {
        Ok(Some(_)) => {}
        Ok(None) => tracing::info!(
            configuration = %reference.name,
            "MutatingWebhookConfiguration not found; caBundle will be set once it is created"
        ),
        Err(error) => {
            tracing::warn!(%error, configuration = %reference.name, "failed to read the MutatingWebhookConfiguration")
        }
    }
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let configuration = tokio::select! {
            item = stream.next() => match item {
                Some(Ok(configuration)) => Some(configuration),
                Some(Err(error)) => {
                    tracing::warn!(%error, configuration = %reference.name, "watch of the MutatingWebhookConfiguration failed; retrying with backoff");
                    continue;
                }
                None => return,
            },
            changed = ca_pem.changed() => {
                if changed.is_err() {
                    return;
                }
                retry_at = Some(tokio::time::Instant::now());
                continue;
            }
            () = retry => match api.get_opt(&reference.name).await {
                Ok(configuration) => configuration,
                Err(error) => {
                    tracing::warn!(%error, configuration = %reference.name, "failed to read the MutatingWebhookConfiguration");
                    retry_at = Some(tokio::time::Instant::now() + RETRY_DELAY);
                    continue;
                }
            },
        };
        retry_at = None;
        let Some(configuration) = configuration else {
            continue;
        };
        let current_ca = ca_pem.borrow_and_update().clone();
        if let Err(error) = sync_once(&api, &configuration, &reference, &current_ca).await {
            tracing::warn!(%error, configuration = %reference.name, "failed to patch caBundle; retrying");
            retry_at = Some(tokio::time::Instant::now() + RETRY_DELAY);
        }
    }
}

async fn sync_once(
    api: &Api<MutatingWebhookConfiguration>,
    configuration: &MutatingWebhookConfiguration,
    reference: &WebhookConfigurationRef,
    ca_pem: &[u8],
) -> Result<(), kube::Error> {
    let has_entry = configuration
        .webhooks
        .iter()
        .flatten()
        .any(|webhook| webhook.name == reference.webhook_name);
    if !has_entry {
        tracing::warn!(
            configuration = %reference.name,
            webhook = %reference.webhook_name,
            "the MutatingWebhookConfiguration has no entry with this webhook name; caBundle not set"
        );
        return Ok(());
    }
    let Some(patch) = ca_bundle_patch(configuration, &reference.webhook_name, ca_pem) else {
        return Ok(());
    };
    api.patch(
        &reference.name,
        &PatchParams::default(),
        &KubePatch::<()>::Json(patch),
    )
    .await?;
    tracing::info!(configuration = %reference.name, webhook = %reference.webhook_name, "patched caBundle");
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};

    use super::*;

    fn entry(name: &str, bundle: Option<&[u8]>) -> MutatingWebhook {
        MutatingWebhook {
            name: name.to_owned(),
            client_config: WebhookClientConfig {
                ca_bundle: bundle.map(|bundle| ByteString(bundle.to_vec())),
                ..Default::default()
            },
            admission_review_versions: vec!["v1".to_owned()],
            side_effects: "None".to_owned(),
            ..Default::default()
        }
    }

    fn configuration(webhooks: Vec<MutatingWebhook>) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            webhooks: Some(webhooks),
            ..Default::default()
        }
    }

    #[test]
    fn patch_sets_only_own_entries() {
        let config = configuration(vec![
            entry("other.example.com", Some(b"theirs")),
            entry("ours", None),
        ]);
        let patch = ca_bundle_patch(&config, "ours", b"CA").expect("our entry lacks the bundle");
        let json = serde_json::to_value(&patch).expect("serialise");
        assert_eq!(
            json,
            serde_json::json!([
                { "op": "test", "path": "/webhooks/1/name", "value": "ours" },
                { "op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "Q0E=" },
            ])
        );
    }

    #[test]
    fn patch_is_none_when_bundle_matches() {
        let config = configuration(vec![entry("ours", Some(b"CA"))]);
        assert!(ca_bundle_patch(&config, "ours", b"CA").is_none());
    }

    #[test]
    fn patch_replaces_stale_bundle() {
        let config = configuration(vec![entry("ours", Some(b"old"))]);
        let mut json = serde_json::to_value(&config).expect("serialise");
        let patch = ca_bundle_patch(&config, "ours", b"new").expect("stale bundle");
        json_patch::patch(&mut json, &patch).expect("patch applies");
        assert_eq!(json["webhooks"][0]["clientConfig"]["caBundle"], "bmV3");
    }
}
