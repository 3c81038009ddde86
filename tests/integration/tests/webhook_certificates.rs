//! Self-managed webhook certificates on the real control plane: one Secret shared by every
//! replica and restart, and a caBundle that kube-apiserver trusts.

mod webhook_support;

use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use testkit::{connect, wait_for};
use time::OffsetDateTime;
use webhook::SshPolicy;
use webhook::config::{ObjectName, SubjectAltName};
use webhook::tls::certs;
use webhook::tls::secret::{self, CA_CERT_KEY, TLS_CERT_KEY};
use webhook_support::*;

fn secret_text(secret: &Secret, key: &str) -> String {
    let bytes = &secret.data.as_ref().expect("data")[key].0;
    String::from_utf8(bytes.clone()).expect("PEM text")
}

async fn ca_bundle_of(
    client: &Client,
    configuration: &str,
    webhook_name: &str,
) -> anyhow::Result<Option<Vec<u8>>> {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let configuration = api.get(configuration).await?;
    let entry = configuration
        .webhooks
        .into_iter()
        .flatten()
        .find(|webhook| webhook.name == webhook_name);
    Ok(entry
        .and_then(|webhook| webhook.client_config.ca_bundle)
        .map(|bundle| bundle.0))
}

async fn wait_for_ca_bundle(
    client: &Client,
    configuration: &str,
    webhook_name: &str,
    expected: &[u8],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let bundle = ca_bundle_of(client, configuration, webhook_name).await?;
        if bundle.as_deref() == Some(expected) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "caBundle of {webhook_name} never became the CA"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn certificate_secret_is_created_once_and_reused() -> anyhow::Result<()> {
    let client = connect().await?;
    let namespace = namespace_with_account(&client, "webhook-cert").await?;
    let secrets: Api<Secret> = namespace.api();
    let secret_name = webhook::config::DEFAULT_TLS_SECRET;
    assert!(secrets.get_opt(secret_name).await?.is_none());

    let config = test_config(namespace.name(), SshPolicy::All, free_port()?);
    let configuration = config.webhook_configuration.clone();
    let mut first = RunningWebhook::start(&client, config).await?;
    let created = secrets.get(secret_name).await?;
    let ca_pem = secret_text(&created, CA_CERT_KEY);
    assert_eq!(first.ca_pem.as_deref(), Some(ca_pem.as_str()));
    assert_eq!(created.type_.as_deref(), Some("kubernetes.io/tls"));
    wait_for_ca_bundle(
        &client,
        &configuration.name,
        &configuration.webhook_name,
        ca_pem.as_bytes(),
    )
    .await?;

    // A client that trusts only the CA reaches the webhook at 127.0.0.1.
    let root = reqwest::Certificate::from_pem(ca_pem.as_bytes())?;
    let https = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .build()?;
    let response = https
        .post(format!("https://{}/mutate", first.address))
        .body("{}")
        .send()
        .await?;
    assert_eq!(
        response.status(),
        400,
        "TLS works and an empty review is rejected"
    );
    first.stop().await?;
    drop(first);

    // A restart (new process, new port) reuses the Secret without writing it.
    let config = test_config(namespace.name(), SshPolicy::All, free_port()?);
    let second = RunningWebhook::start(&client, config).await?;
    let reused = secrets.get(secret_name).await?;
    assert_eq!(reused.metadata.uid, created.metadata.uid);
    assert_eq!(
        reused.metadata.resource_version, created.metadata.resource_version,
        "not rewritten"
    );
    assert_eq!(second.ca_pem.as_deref(), Some(ca_pem.as_str()));
    wait_for_ca_bundle(
        &client,
        &configuration.name,
        &configuration.webhook_name,
        ca_pem.as_bytes(),
    )
    .await?;

    // kube-apiserver trusts the bundle: a session pod gets the sidecar through the restarted
    // webhook.
    namespace
        .api::<StatefulSet>()
        .create(&PostParams::default(), &session_stateful_set("hana"))
        .await?;
    let pod = wait_for(&namespace.api::<Pod>(), "hana-0", TIMEOUT, |_| true).await?;
    let containers = pod.spec.expect("spec").containers;
    assert!(
        containers
            .iter()
            .any(|container| container.name == "renku-ssh")
    );

    namespace.delete_and_wait().await
}

#[tokio::test]
async fn racing_replicas_converge_on_one_secret() -> anyhow::Result<()> {
    let client = connect().await?;
    let namespace = namespace_with_account(&client, "webhook-race").await?;
    let name = ObjectName::new(namespace.name(), "raced-tls");
    let sans = vec![SubjectAltName::Ip([127, 0, 0, 1].into())];

    let replicas = (0..4).map(|_| {
        let client = client.clone();
        let name = name.clone();
        let sans = sans.clone();
        tokio::spawn(async move { secret::ensure(&client, &name, &sans).await })
    });
    let mut results = Vec::new();
    for replica in replicas {
        results.push(replica.await??);
    }
    let stored = namespace.api::<Secret>().get("raced-tls").await?;
    let stored_ca = secret_text(&stored, CA_CERT_KEY);
    for result in &results {
        assert_eq!(
            result.ca.cert_pem, stored_ca,
            "every replica uses the stored CA"
        );
        assert_eq!(result.serving.cert_pem, secret_text(&stored, TLS_CERT_KEY));
    }

    namespace.delete_and_wait().await
}

#[tokio::test]
async fn serving_certificate_is_reissued_for_new_name() -> anyhow::Result<()> {
    let client = connect().await?;
    let namespace = namespace_with_account(&client, "webhook-reissue").await?;
    let name = ObjectName::new(namespace.name(), "reissued-tls");
    let loopback = SubjectAltName::Ip([127, 0, 0, 1].into());
    let first = secret::ensure(&client, &name, std::slice::from_ref(&loopback)).await?;
    let created = namespace.api::<Secret>().get("reissued-tls").await?;

    let extra = SubjectAltName::Dns("webhook.example.test".to_owned());
    let sans = vec![loopback, extra];
    let second = secret::ensure(&client, &name, &sans).await?;
    let updated = namespace.api::<Secret>().get("reissued-tls").await?;
    assert_eq!(
        updated.metadata.uid, created.metadata.uid,
        "the Secret is updated in place"
    );
    assert_eq!(second.ca, first.ca, "the CA is never replaced");
    assert_ne!(second.serving, first.serving);
    let now = OffsetDateTime::now_utc();
    assert_eq!(
        certs::reissue_reason(&second.ca, &second.serving, &sans, now),
        None
    );
    assert_eq!(secret_text(&updated, TLS_CERT_KEY), second.serving.cert_pem);

    namespace.delete_and_wait().await
}

#[tokio::test]
async fn ca_bundle_is_patched_for_own_entry_only() -> anyhow::Result<()> {
    let client = connect().await?;
    let namespace = namespace_with_account(&client, "webhook-bundle").await?;
    let port = free_port()?;
    let mut config = test_config(namespace.name(), SshPolicy::All, port);
    config.registration = None;
    let reference = config.webhook_configuration.clone();

    // The configuration as a chart would install it: our entry without a bundle, and an entry of
    // another webhook that selects no namespace.
    let other_bundle = b"not our CA".to_vec();
    let encoded_other = base64::engine::general_purpose::STANDARD.encode(&other_bundle);
    let configuration: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": reference.name },
        "webhooks": [
            {
                "name": "other.test.renku-ssh.io",
                "clientConfig": { "url": "https://127.0.0.1:9/never", "caBundle": encoded_other },
                "namespaceSelector": { "matchLabels": { "test.renku-ssh.io/never": "true" } },
                "rules": [{ "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"] }],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "admissionReviewVersions": ["v1"],
            },
            {
                "name": reference.webhook_name,
                "clientConfig": { "url": format!("https://127.0.0.1:{port}/mutate") },
                "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": namespace.name() } },
                "objectSelector": { "matchLabels": { "app.kubernetes.io/name": "AmaltheaSession" } },
                "rules": [{ "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"] }],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "timeoutSeconds": 5,
                "admissionReviewVersions": ["v1"],
            },
        ],
    }))?;
    let configurations = Api::<MutatingWebhookConfiguration>::all(client.clone());
    configurations
        .create(&PostParams::default(), &configuration)
        .await?;

    let webhook = RunningWebhook::start(&client, config).await?;
    let ca_pem = webhook.ca_pem.clone().expect("self-managed CA");
    wait_for_ca_bundle(
        &client,
        &reference.name,
        &reference.webhook_name,
        ca_pem.as_bytes(),
    )
    .await?;
    let other = ca_bundle_of(&client, &reference.name, "other.test.renku-ssh.io").await?;
    assert_eq!(
        other,
        Some(other_bundle.clone()),
        "another webhook's entry is never modified"
    );

    // An upgrade that re-applies a stale bundle is corrected.
    // MutatingWebhookConfiguration merges `webhooks` by name in a strategic merge patch.
    let stale = json!({
        "webhooks": [{
            "name": reference.webhook_name,
            "clientConfig": { "caBundle": base64::engine::general_purpose::STANDARD.encode(b"stale") },
        }],
    });
    let written = configurations
        .patch(
            &reference.name,
            &PatchParams::default(),
            &Patch::Strategic(stale),
        )
        .await?;
    let written_bundle = written
        .webhooks
        .into_iter()
        .flatten()
        .find(|entry| entry.name == reference.webhook_name)
        .and_then(|entry| entry.client_config.ca_bundle);
    assert_eq!(
        written_bundle.map(|bundle| bundle.0),
        Some(b"stale".to_vec())
    );
    wait_for_ca_bundle(
        &client,
        &reference.name,
        &reference.webhook_name,
        ca_pem.as_bytes(),
    )
    .await?;
    let other = ca_bundle_of(&client, &reference.name, "other.test.renku-ssh.io").await?;
    assert_eq!(other, Some(other_bundle));

    // With the patched bundle, kube-apiserver's calls succeed.
    namespace
        .api::<StatefulSet>()
        .create(&PostParams::default(), &session_stateful_set("iris"))
        .await?;
    let pod = wait_for(&namespace.api::<Pod>(), "iris-0", TIMEOUT, |_| true).await?;
    assert!(
        pod.spec
            .expect("spec")
            .containers
            .iter()
            .any(|container| container.name == "renku-ssh")
    );

    namespace.delete_and_wait().await
}
