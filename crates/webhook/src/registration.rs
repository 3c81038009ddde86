//! The MutatingWebhookConfiguration that sends session pods to this webhook.

use std::collections::BTreeMap;

use api::amalthea::{NAME_LABEL, NAME_LABEL_VALUE};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};

use crate::config::WebhookConfigurationRef;

/// Field manager of the objects the webhook writes with server-side apply.
pub const FIELD_MANAGER: &str = "renku-ssh-webhook";
/// Seconds the API server waits for a response before it ignores the webhook.
pub const TIMEOUT_SECONDS: i32 = 5;

/// Builds the configuration: pod CREATE only, for pods with the amalthea session label,
/// `failurePolicy: Ignore` so that a session starts (without SSH) when the webhook is down, no
/// side effects, a 5 s timeout.
pub fn webhook_configuration(
    reference: &WebhookConfigurationRef,
    client_config: WebhookClientConfig,
    namespace_selector: Option<LabelSelector>,
) -> MutatingWebhookConfiguration {
    let session_pods = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            NAME_LABEL.to_owned(),
            NAME_LABEL_VALUE.to_owned(),
        )])),
        ..Default::default()
    };
    let pod_create = RuleWithOperations {
        api_groups: Some(vec![String::new()]),
        api_versions: Some(vec!["v1".to_owned()]),
        operations: Some(vec!["CREATE".to_owned()]),
        resources: Some(vec!["pods".to_owned()]),
        scope: Some("Namespaced".to_owned()),
    };
    let webhook = MutatingWebhook {
        name: reference.webhook_name.clone(),
        admission_review_versions: vec!["v1".to_owned()],
        client_config,
        failure_policy: Some("Ignore".to_owned()),
        match_policy: Some("Equivalent".to_owned()),
        namespace_selector,
        object_selector: Some(session_pods),
        reinvocation_policy: Some("Never".to_owned()),
        rules: Some(vec![pod_create]),
        side_effects: "None".to_owned(),
        timeout_seconds: Some(TIMEOUT_SECONDS),
        ..Default::default()
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(reference.name.clone()),
            ..Default::default()
        },
        webhooks: Some(vec![webhook]),
    }
}

/// Returns a client config that calls `url` and trusts `ca_pem`.
pub fn url_client_config(url: &str, ca_pem: Option<&[u8]>) -> WebhookClientConfig {
    WebhookClientConfig {
        url: Some(url.to_owned()),
        ca_bundle: ca_pem.map(|pem| ByteString(pem.to_vec())),
        service: None,
    }
}

/// Applies `configuration` with server-side apply under [`FIELD_MANAGER`].
pub async fn apply(
    client: &Client,
    configuration: &MutatingWebhookConfiguration,
) -> Result<(), kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = configuration.metadata.name.clone().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(configuration))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_selects_session_pods_and_ignores_failures() {
        let reference = WebhookConfigurationRef::default();
        let configuration = webhook_configuration(
            &reference,
            url_client_config("https://127.0.0.1:8443/mutate", None),
            None,
        );
        let json = serde_json::to_value(&configuration).expect("serialise");
        let webhook = &json["webhooks"][0];
        assert_eq!(json["metadata"]["name"], "renku-ssh-webhook");
        assert_eq!(webhook["name"], "sidecar.ssh.renku.io");
        assert_eq!(webhook["failurePolicy"], "Ignore");
        assert_eq!(webhook["sideEffects"], "None");
        assert_eq!(webhook["timeoutSeconds"], 5);
        assert_eq!(
            webhook["objectSelector"],
            serde_json::json!({ "matchLabels": { "app.kubernetes.io/name": "AmaltheaSession" } })
        );
        assert_eq!(
            webhook["rules"][0]["operations"],
            serde_json::json!(["CREATE"])
        );
        assert_eq!(
            webhook["rules"][0]["resources"],
            serde_json::json!(["pods"])
        );
        assert_eq!(
            webhook["clientConfig"]["url"],
            "https://127.0.0.1:8443/mutate"
        );
    }
}
