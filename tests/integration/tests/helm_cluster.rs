//! The Helm chart on the local control plane. The rendered objects pass the real API server
//! (server-side apply, Pod Security "restricted"). The operator and gateway ServiceAccounts can
//! do exactly what their components need, checked with their own TokenRequest tokens. Upgrades
//! and uninstalls keep the gateway host key, the CA Secret and the webhook caBundle.
//!
//! Deployments stay unscheduled because the control plane has no kubelet; the ReplicaSet
//! controller still creates their Pods, which Pod Security admission checks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use testkit::{
    ChartInstall, ClusterScopedCleanup, TEST_FIELD_MANAGER, TestNamespace, apply_objects, connect,
    install_project_crds, merge_values, parse_documents, render_chart, test_values,
    wait_until_deleted, workspace_root,
};

/// API groups whose CRDs the local control plane does not have (cert-manager, Prometheus
/// Operator); objects of these groups are checked by helm_chart.rs only.
const ABSENT_GROUPS: [&str; 2] = ["cert-manager.io/", "monitoring.coreos.com/"];

fn values_for(namespace: &str, overlay: Value) -> Value {
    let mut values = test_values(namespace);
    merge_values(&mut values, &overlay);
    values
}

/// Returns the production sample, pointed at the test's namespaces. It drops the sample's
/// PriorityClass, which does not exist here and would make Priority admission reject the Pods.
fn production_values(namespace: &str, sessions: &str) -> anyhow::Result<Value> {
    let path = workspace_root().join("manifests/samples/values-production.yaml");
    let mut values = parse_documents(&std::fs::read_to_string(path)?)?.remove(0);
    merge_values(
        &mut values,
        &json!({
            "sessions": { "namespace": sessions },
            "webhook": { "namespaceSelector": {
                "matchLabels": { "kubernetes.io/metadata.name": namespace },
            } },
            "operator": { "priorityClassName": "" },
            "gateway": { "priorityClassName": "" },
        }),
    );
    Ok(values)
}

async fn label_restricted(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let patch = json!({ "metadata": { "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    } } });
    Api::<Namespace>::all(client.clone())
        .patch(
            namespace,
            &PatchParams::apply(TEST_FIELD_MANAGER),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Waits until the ReplicaSet controller has created a Pod with `labels`, and returns the
/// Pod count. On timeout the error lists the namespace's FailedCreate Events, which carry the
/// admission message.
async fn wait_for_pods(client: &Client, namespace: &str, labels: &str) -> anyhow::Result<usize> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let listed = pods.list(&ListParams::default().labels(labels)).await?;
        if !listed.items.is_empty() {
            return Ok(listed.items.len());
        }
        if tokio::time::Instant::now() >= deadline {
            let events: Api<Event> = Api::namespaced(client.clone(), namespace);
            let failures = events
                .list(&ListParams::default().fields("reason=FailedCreate"))
                .await?;
            let messages: Vec<String> = failures
                .items
                .into_iter()
                .filter_map(|event| event.message)
                .collect();
            anyhow::bail!(
                "no Pod with labels {labels} after 60 s; FailedCreate events: {messages:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn rendered_objects_apply_server_side() -> anyhow::Result<()> {
    let client = connect().await?;
    install_project_crds(&client).await?;
    let namespace = TestNamespace::create(&client, "helm-apply").await?;
    let sessions = TestNamespace::create(&client, "helm-sessions").await?;
    label_restricted(&client, namespace.name()).await?;

    let cases = [
        ("d", values_for(namespace.name(), json!({}))),
        ("p", production_values(namespace.name(), sessions.name())?),
    ];
    for (suffix, values) in cases {
        let release = format!("{}-{suffix}", namespace.name());
        let _cleanup = ClusterScopedCleanup::new(&release);
        let objects = render_chart(&release, namespace.name(), &values).await?;
        let (absent, served): (Vec<Value>, Vec<Value>) = objects.into_iter().partition(|object| {
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            ABSENT_GROUPS
                .iter()
                .any(|group| api_version.starts_with(group))
        });
        apply_objects(&client, namespace.name(), &served).await?;

        let absent_kinds: BTreeSet<&str> = absent
            .iter()
            .filter_map(|object| object["kind"].as_str())
            .collect();
        let expected_absent: BTreeSet<&str> = match suffix {
            "p" => BTreeSet::from(["Certificate", "ServiceMonitor"]),
            _ => BTreeSet::new(),
        };
        assert_eq!(absent_kinds, expected_absent, "{release}");

        for component in ["operator", "gateway"] {
            let labels = format!(
                "app.kubernetes.io/instance={release},app.kubernetes.io/name=renku-ssh-{component}"
            );
            let count = wait_for_pods(&client, namespace.name(), &labels).await?;
            assert!(count >= 1, "{release} {component}");
        }
        let configuration = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .get(&format!("{release}-renku-ssh-webhook"))
            .await?;
        let webhook = &configuration.webhooks.unwrap_or_default()[0];
        assert_eq!(webhook.failure_policy.as_deref(), Some("Ignore"));
    }

    sessions.delete_and_wait().await?;
    namespace.delete_and_wait().await
}

/// One SelfSubjectAccessReview question.
#[derive(Clone, Copy, Debug)]
struct Access<'a> {
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    subresource: &'a str,
    namespace: &'a str,
    name: &'a str,
}

const fn access<'a>(
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    namespace: &'a str,
) -> Access<'a> {
    Access {
        verb,
        group,
        resource,
        subresource: "",
        namespace,
        name: "",
    }
}

impl<'a> Access<'a> {
    const fn named(self, name: &'a str) -> Self {
        Self { name, ..self }
    }

    const fn subresource(self, subresource: &'a str) -> Self {
        Self {
            subresource,
            ..self
        }
    }
}

/// Asks the API server whether the client's own identity may do `access`.
async fn allowed(client: &Client, access: Access<'_>) -> anyhow::Result<bool> {
    let optional = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    let review = SelfSubjectAccessReview {
        metadata: ObjectMeta::default(),
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(access.verb.to_owned()),
                group: Some(access.group.to_owned()),
                resource: Some(access.resource.to_owned()),
                subresource: optional(access.subresource),
                namespace: optional(access.namespace),
                name: optional(access.name),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        status: None,
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|status| status.allowed))
}

/// Checks every access in `expected` and returns the ones whose result differs, so that a
/// failure lists them all.
async fn mismatches(
    client: &Client,
    expected: &[(Access<'_>, bool)],
) -> anyhow::Result<Vec<String>> {
    let mut wrong = Vec::new();
    for (access, expected) in expected {
        let actual = allowed(client, *access).await?;
        if actual != *expected {
            wrong.push(format!(
                "{access:?}: expected allowed={expected}, got {actual}"
            ));
        }
    }
    Ok(wrong)
}

async fn username(client: &Client) -> anyhow::Result<String> {
    let review: SelfSubjectReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "SelfSubjectReview",
    }))?;
    let answer = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer
        .status
        .and_then(|status| status.user_info)
        .and_then(|user| user.username)
        .unwrap_or_default())
}

#[tokio::test]
async fn service_accounts_have_least_privilege() -> anyhow::Result<()> {
    let client = connect().await?;
    install_project_crds(&client).await?;
    let namespace = TestNamespace::create(&client, "helm-rbac").await?;
    let install =
        ChartInstall::install(&client, namespace.name(), &test_values(namespace.name())).await?;
    let ns = namespace.name();
    let fullname = install.fullname();
    let lease = format!("{fullname}-operator");
    let ca = format!("{fullname}-gateway-ca");
    let host_key = format!("{fullname}-gateway-host-key");
    let webhook_tls = format!("{fullname}-webhook-tls");
    let configuration = format!("{fullname}-webhook");
    // Sessions may live in any namespace; "default" stands for one the chart did not create.
    let other = "default";

    let operator = install.operator_client().await?;
    let gateway = install.gateway_client().await?;
    assert_eq!(
        username(&operator).await?,
        format!("system:serviceaccount:{ns}:{fullname}-operator")
    );
    assert_eq!(
        username(&gateway).await?,
        format!("system:serviceaccount:{ns}:{fullname}-gateway")
    );

    let ssh = "ssh.renku.io";
    let operator_expected = [
        (access("list", ssh, "sshaccesses", ""), true),
        (access("watch", ssh, "sshaccesses", ""), true),
        (access("create", ssh, "sshaccesses", other), true),
        (access("patch", ssh, "sshaccesses", other), true),
        (access("delete", ssh, "sshaccesses", other), true),
        (
            access("patch", ssh, "sshaccesses", other).subresource("status"),
            true,
        ),
        (access("update", ssh, "sshaccesses", other), false),
        (access("list", "amalthea.dev", "amaltheasessions", ""), true),
        (
            access("watch", "amalthea.dev", "amaltheasessions", ""),
            true,
        ),
        (
            access("patch", "amalthea.dev", "amaltheasessions", other),
            false,
        ),
        (
            access("delete", "amalthea.dev", "amaltheasessions", other),
            false,
        ),
        (access("watch", "", "pods", ""), true),
        (access("create", "", "pods", other), false),
        (access("delete", "", "pods", other), false),
        (
            access("create", "", "pods", other).subresource("exec"),
            false,
        ),
        (access("watch", "", "secrets", ""), true),
        (access("get", "", "secrets", other), true),
        (access("create", "", "secrets", other), true),
        (access("patch", "", "secrets", other), true),
        (access("update", "", "secrets", other), false),
        (access("delete", "", "secrets", other), false),
        (access("update", "", "secrets", ns).named(&ca), true),
        (
            access("update", "", "secrets", ns).named(&webhook_tls),
            true,
        ),
        (access("update", "", "secrets", ns).named(&host_key), false),
        (access("create", "", "services", other), true),
        (access("patch", "", "services", other), true),
        (access("delete", "", "services", other), false),
        (
            access("create", "networking.k8s.io", "networkpolicies", other),
            true,
        ),
        (
            access("patch", "networking.k8s.io", "networkpolicies", other),
            true,
        ),
        (
            access("delete", "networking.k8s.io", "networkpolicies", other),
            false,
        ),
        (access("create", "events.k8s.io", "events", other), true),
        (access("patch", "events.k8s.io", "events", other), true),
        (access("create", "coordination.k8s.io", "leases", ns), true),
        (
            access("get", "coordination.k8s.io", "leases", ns).named(&lease),
            true,
        ),
        (
            access("update", "coordination.k8s.io", "leases", ns).named(&lease),
            true,
        ),
        (
            access("update", "coordination.k8s.io", "leases", ns).named("kube-scheduler"),
            false,
        ),
        (
            access("create", "coordination.k8s.io", "leases", other),
            false,
        ),
        (
            access(
                "get",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "",
            )
            .named(&configuration),
            true,
        ),
        (
            access(
                "watch",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "",
            )
            .named(&configuration),
            true,
        ),
        (
            access(
                "patch",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "",
            )
            .named(&configuration),
            true,
        ),
        (
            access(
                "patch",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "",
            )
            .named("other-webhook"),
            false,
        ),
        (
            access(
                "list",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "",
            ),
            false,
        ),
        (
            access(
                "create",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "",
            ),
            false,
        ),
        (
            access(
                "update",
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "",
            ),
            false,
        ),
        (
            access("create", "rbac.authorization.k8s.io", "rolebindings", other),
            false,
        ),
        (access("get", "", "nodes", ""), false),
        (access("get", "", "configmaps", other), false),
    ];
    let wrong = mismatches(&operator, &operator_expected).await?;
    assert!(
        wrong.is_empty(),
        "operator ServiceAccount:\n{}",
        wrong.join("\n")
    );

    let gateway_expected = [
        (access("list", ssh, "sshaccesses", ""), true),
        (access("watch", ssh, "sshaccesses", ""), true),
        (access("get", ssh, "sshaccesses", other), true),
        (access("patch", ssh, "sshaccesses", other), false),
        (
            access("patch", ssh, "sshaccesses", other).subresource("status"),
            false,
        ),
        (
            access("watch", "amalthea.dev", "amaltheasessions", ""),
            true,
        ),
        (
            access("patch", "amalthea.dev", "amaltheasessions", other),
            false,
        ),
        (access("watch", "", "pods", ""), true),
        (
            access("create", "", "pods", other).subresource("exec"),
            false,
        ),
        (access("get", "", "secrets", ns).named(&ca), true),
        (access("get", "", "secrets", ns).named(&host_key), true),
        (access("watch", "", "secrets", ns).named(&ca), true),
        (access("get", "", "secrets", ns).named(&webhook_tls), false),
        (access("update", "", "secrets", ns).named(&ca), false),
        (access("list", "", "secrets", ns), false),
        (access("get", "", "secrets", other), false),
        (access("create", "", "services", other), false),
        (access("create", "events.k8s.io", "events", other), false),
        (
            access("get", "coordination.k8s.io", "leases", ns).named(&lease),
            false,
        ),
        (
            access(
                "patch",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "",
            )
            .named(&configuration),
            false,
        ),
        (access("get", "", "configmaps", other), false),
    ];
    let wrong = mismatches(&gateway, &gateway_expected).await?;
    assert!(
        wrong.is_empty(),
        "gateway ServiceAccount:\n{}",
        wrong.join("\n")
    );

    install.uninstall().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn namespaced_sessions_limit_rbac() -> anyhow::Result<()> {
    let client = connect().await?;
    install_project_crds(&client).await?;
    let namespace = TestNamespace::create(&client, "helm-scoped").await?;
    let sessions = TestNamespace::create(&client, "helm-sessions").await?;
    let values = values_for(
        namespace.name(),
        json!({ "sessions": { "namespace": sessions.name() } }),
    );
    let install = ChartInstall::install(&client, namespace.name(), &values).await?;
    let other = "default";
    let ssh = "ssh.renku.io";

    let operator = install.operator_client().await?;
    let operator_expected = [
        (access("watch", ssh, "sshaccesses", sessions.name()), true),
        (
            access("patch", ssh, "sshaccesses", sessions.name()).subresource("status"),
            true,
        ),
        (access("watch", ssh, "sshaccesses", other), false),
        (access("watch", ssh, "sshaccesses", ""), false),
        (access("watch", "", "secrets", sessions.name()), true),
        (access("get", "", "secrets", other), false),
        (access("watch", "", "secrets", ""), false),
        (access("create", "", "services", sessions.name()), true),
        (access("create", "", "services", other), false),
        (
            access("create", "events.k8s.io", "events", sessions.name()),
            true,
        ),
        (
            access("create", "coordination.k8s.io", "leases", namespace.name()),
            true,
        ),
    ];
    let wrong = mismatches(&operator, &operator_expected).await?;
    assert!(
        wrong.is_empty(),
        "operator ServiceAccount:\n{}",
        wrong.join("\n")
    );

    let gateway = install.gateway_client().await?;
    let gateway_expected = [
        (access("watch", ssh, "sshaccesses", sessions.name()), true),
        (access("watch", "", "pods", sessions.name()), true),
        (access("watch", "", "pods", other), false),
        (
            access("watch", "amalthea.dev", "amaltheasessions", ""),
            false,
        ),
    ];
    let wrong = mismatches(&gateway, &gateway_expected).await?;
    assert!(
        wrong.is_empty(),
        "gateway ServiceAccount:\n{}",
        wrong.join("\n")
    );

    install.uninstall().await?;
    sessions.delete_and_wait().await?;
    namespace.delete_and_wait().await
}

fn secret_data(secret: &Secret) -> BTreeMap<String, ByteString> {
    secret.data.clone().unwrap_or_default()
}

fn ca_bundle(configuration: &MutatingWebhookConfiguration) -> Option<ByteString> {
    configuration
        .webhooks
        .as_ref()?
        .first()?
        .client_config
        .ca_bundle
        .clone()
}

#[tokio::test]
async fn upgrade_keeps_keys_and_ca_bundle() -> anyhow::Result<()> {
    let client = connect().await?;
    install_project_crds(&client).await?;
    let namespace = TestNamespace::create(&client, "helm-upgrade").await?;
    let values = test_values(namespace.name());
    let install = ChartInstall::install(&client, namespace.name(), &values).await?;
    let fullname = install.fullname();
    let host_key_name = format!("{fullname}-gateway-host-key");
    let ca_name = format!("{fullname}-gateway-ca");
    let configuration_name = format!("{fullname}-webhook");
    let secrets: Api<Secret> = namespace.api();
    let configurations = Api::<MutatingWebhookConfiguration>::all(client.clone());

    // What the operator does at run time, with the operator's own token: create the CA Secret
    // once and write its CA into the webhook configuration's caBundle.
    let operator = install.operator_client().await?;
    let ca = Secret {
        metadata: ObjectMeta {
            name: Some(ca_name.clone()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (
                "ca".to_owned(),
                ByteString(b"private key stand-in".to_vec()),
            ),
            (
                "ca.pub".to_owned(),
                ByteString(b"ssh-ed25519 AAAA stand-in".to_vec()),
            ),
        ])),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(operator.clone(), namespace.name())
        .create(&PostParams::default(), &ca)
        .await?;
    let bundle = b"-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n";
    // `webhooks` merges by entry name, so this touches only the chart's entry.
    let patch = json!({ "webhooks": [{
        "name": "sidecar.ssh.renku.io",
        "clientConfig": { "caBundle": ByteString(bundle.to_vec()) },
    }] });
    Api::<MutatingWebhookConfiguration>::all(operator.clone())
        .patch(
            &configuration_name,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;

    let host_key_before = secrets.get(&host_key_name).await?;
    let ca_before = secrets.get(&ca_name).await?;
    let bundle_before = ca_bundle(&configurations.get(&configuration_name).await?);
    assert_eq!(
        bundle_before.as_ref().map(|bundle| bundle.0.as_slice()),
        Some(bundle.as_slice())
    );

    // The gateway reads both Secrets with its own token.
    let gateway = install.gateway_client().await?;
    let gateway_secrets = Api::<Secret>::namespaced(gateway, namespace.name());
    assert_eq!(
        secret_data(&gateway_secrets.get(&host_key_name).await?),
        secret_data(&host_key_before)
    );
    assert_eq!(
        secret_data(&gateway_secrets.get(&ca_name).await?),
        secret_data(&ca_before)
    );

    let mut changed = values.clone();
    merge_values(
        &mut changed,
        &json!({ "gateway": { "replicas": 3, "limits": { "maxAuthTries": 3 } } }),
    );
    install.upgrade(&changed).await?;

    let deployments: Api<Deployment> = namespace.api();
    let gateway_deployment = deployments.get(&format!("{fullname}-gateway")).await?;
    assert_eq!(
        gateway_deployment.spec.and_then(|spec| spec.replicas),
        Some(3),
        "the upgrade applied"
    );
    let host_key_after = secrets.get(&host_key_name).await?;
    assert_eq!(
        secret_data(&host_key_after),
        secret_data(&host_key_before),
        "host key changed on upgrade"
    );
    let ca_after = secrets.get(&ca_name).await?;
    assert_eq!(
        ca_after.metadata.resource_version, ca_before.metadata.resource_version,
        "CA Secret written"
    );
    let bundle_after = ca_bundle(&configurations.get(&configuration_name).await?);
    assert_eq!(bundle_after, bundle_before, "caBundle changed on upgrade");

    // Uninstall removes the release's objects but keeps both Secrets.
    install.uninstall().await?;
    wait_until_deleted(
        &deployments,
        &format!("{fullname}-gateway"),
        Duration::from_secs(30),
    )
    .await?;
    assert!(configurations.get_opt(&configuration_name).await?.is_none());
    let kept = secrets.get(&host_key_name).await?;
    assert_eq!(
        secret_data(&kept),
        secret_data(&host_key_before),
        "host key removed on uninstall"
    );
    assert_eq!(
        secret_data(&secrets.get(&ca_name).await?),
        secret_data(&ca_before)
    );

    // A new install of the same release adopts the kept host key instead of making a new one.
    let reinstall = ChartInstall::install(&client, namespace.name(), &values).await?;
    let adopted = secrets.get(&host_key_name).await?;
    assert_eq!(
        secret_data(&adopted),
        secret_data(&host_key_before),
        "host key replaced on reinstall"
    );

    reinstall.uninstall().await?;
    namespace.delete_and_wait().await
}
