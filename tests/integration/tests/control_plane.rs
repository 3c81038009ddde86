//! Proves the local control plane is a real one: CRDs, watches, server-side apply with field
//! managers, garbage collection and namespace deletion all behave as on a production cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Pod, PodSpec, PodTemplateSpec, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use testkit::{TestNamespace, apply_crd, connect, mark_pod_running, wait_for, wait_until_deleted};

/// A throwaway resource that exists only to exercise the API server.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "test.renku-ssh.io",
    version = "v1",
    kind = "Probe",
    namespaced
)]
struct ProbeSpec {
    size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    color: Option<String>,
}

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn custom_object_is_watched_and_applied() -> anyhow::Result<()> {
    let client = connect().await?;
    apply_crd(&client, &Probe::crd()).await?;
    let namespace = TestNamespace::create(&client, "control-plane").await?;
    let probes: Api<Probe> = namespace.api();

    let config = watcher::Config::default();
    let mut events = watcher::watcher(probes.clone(), config).boxed();
    // The first events replay the (empty) initial list; the object comes after.
    let owner = PatchParams::apply("renku-ssh-owner");
    let probe = Probe::new(
        "first",
        ProbeSpec {
            size: 1,
            color: None,
        },
    );
    probes.patch("first", &owner, &Patch::Apply(&probe)).await?;
    let seen = tokio::time::timeout(TIMEOUT, async {
        while let Some(event) = events.try_next().await? {
            if let Event::Apply(object) | Event::InitApply(object) = event
                && object.name_any() == "first"
            {
                return anyhow::Ok(object);
            }
        }
        anyhow::bail!("watch ended before the object was seen")
    })
    .await??;
    assert_eq!(seen.spec.size, 1);

    // Server-side apply updates in place and records the field manager, and a second manager
    // that claims the same field conflicts unless it forces.
    let applied = serde_json::json!({
        "apiVersion": "test.renku-ssh.io/v1",
        "kind": "Probe",
        "metadata": { "name": "first" },
        "spec": { "size": 2, "color": "blue" },
    });
    let probe = probes
        .patch("first", &owner, &Patch::Apply(&applied))
        .await?;
    assert_eq!(probe.spec.size, 2);
    let managers: Vec<_> = probe
        .managed_fields()
        .iter()
        .filter_map(|entry| entry.manager.clone())
        .collect();
    assert!(
        managers.contains(&"renku-ssh-owner".to_string()),
        "managers: {managers:?}"
    );

    let rival = serde_json::json!({
        "apiVersion": "test.renku-ssh.io/v1",
        "kind": "Probe",
        "metadata": { "name": "first" },
        "spec": { "size": 3 },
    });
    let conflict = probes
        .patch(
            "first",
            &PatchParams::apply("renku-ssh-rival"),
            &Patch::Apply(&rival),
        )
        .await
        .expect_err("a second manager must conflict on spec.size");
    assert!(
        matches!(&conflict, kube::Error::Api(status) if status.code == 409),
        "expected 409 Conflict, got {conflict:?}"
    );
    let forced = PatchParams::apply("renku-ssh-rival").force();
    let probe = probes
        .patch("first", &forced, &Patch::Apply(&rival))
        .await?;
    assert_eq!(probe.spec.size, 3);
    assert_eq!(
        probe.spec.color.as_deref(),
        Some("blue"),
        "fields of the first manager stay"
    );

    namespace.delete_and_wait().await
}

#[tokio::test]
async fn owned_object_is_garbage_collected() -> anyhow::Result<()> {
    let client = connect().await?;
    let namespace = TestNamespace::create(&client, "control-plane").await?;
    let config_maps: Api<ConfigMap> = namespace.api();

    let owner = config_maps
        .create(&PostParams::default(), &config_map("owner", None))
        .await?;
    let reference = OwnerReference {
        api_version: "v1".to_string(),
        kind: "ConfigMap".to_string(),
        name: owner.name_any(),
        uid: owner
            .meta()
            .uid
            .clone()
            .expect("created objects have a uid"),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    config_maps
        .create(
            &PostParams::default(),
            &config_map("owned", Some(reference)),
        )
        .await?;

    config_maps
        .delete("owner", &DeleteParams::background())
        .await?;
    wait_until_deleted(&config_maps, "owned", TIMEOUT).await?;

    namespace.delete_and_wait().await
}

#[tokio::test]
async fn new_namespace_gets_default_service_account() -> anyhow::Result<()> {
    let client = connect().await?;
    let namespace = TestNamespace::create(&client, "control-plane").await?;
    let accounts: Api<ServiceAccount> = namespace.api();
    wait_for(&accounts, "default", TIMEOUT, |_| true).await?;

    let name = namespace.name().to_string();
    namespace.delete_and_wait().await?;
    let namespaces = Api::<Namespace>::all(client);
    assert!(namespaces.get_opt(&name).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn stateful_set_pod_is_created_and_marked_running() -> anyhow::Result<()> {
    let client = connect().await?;
    let namespace = TestNamespace::create(&client, "control-plane").await?;
    // The ServiceAccount admission plugin rejects pods until the default account exists.
    wait_for(
        &namespace.api::<ServiceAccount>(),
        "default",
        TIMEOUT,
        |_| true,
    )
    .await?;
    let labels = BTreeMap::from([("app".to_string(), "probe".to_string())]);
    let stateful_set = StatefulSet {
        metadata: ObjectMeta {
            name: Some("probe".to_string()),
            ..Default::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "main".to_string(),
                        image: Some("registry.invalid/probe:1".to_string()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    namespace
        .api::<StatefulSet>()
        .create(&PostParams::default(), &stateful_set)
        .await?;

    // The StatefulSet controller in kube-controller-manager creates the pod; no kubelet runs,
    // so the test writes the status a kubelet would.
    let pods: Api<Pod> = namespace.api();
    wait_for(&pods, "probe-0", TIMEOUT, |_| true).await?;
    let pod = mark_pod_running(&pods, "probe-0", "10.244.0.7").await?;
    let status = pod.status.expect("the status was just written");
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.7"));

    namespace.delete_and_wait().await
}

fn config_map(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            owner_references: owner.map(|owner| vec![owner]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("key".to_string(), "value".to_string())])),
        ..Default::default()
    }
}
