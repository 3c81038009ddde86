//! The sidecar webhook on the real control plane: kube-apiserver calls the in-process webhook
//! over HTTPS for pods that kube-controller-manager's StatefulSet controller creates.

mod webhook_support;

use std::time::{Duration, Instant};

use api::AmaltheaSession;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};
use testkit::{TestNamespace, connect, wait_for};
use webhook::SshPolicy;
use webhook_support::*;

/// Creates the session object and its StatefulSet, waits for pod `<name>-0`, and returns the raw
/// JSON of the pod and of the StatefulSet.
async fn start_session(
    client: &Client,
    namespace: &TestNamespace,
    webhook: &RunningWebhook,
    session: AmaltheaSession,
) -> anyhow::Result<(Value, Value)> {
    let name = session.metadata.name.clone().expect("session name");
    namespace
        .api::<AmaltheaSession>()
        .create(&PostParams::default(), &session)
        .await?;
    // The caches must have seen the session before its pod arrives, as they have when amalthea
    // creates the StatefulSet after the session.
    let deadline = Instant::now() + TIMEOUT;
    while !webhook.cache.facts(namespace.name(), &name).session_found {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the webhook cache never saw session {name}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    create_stateful_set(client, namespace, &name).await
}

async fn create_stateful_set(
    client: &Client,
    namespace: &TestNamespace,
    name: &str,
) -> anyhow::Result<(Value, Value)> {
    namespace
        .api::<StatefulSet>()
        .create(&PostParams::default(), &session_stateful_set(name))
        .await?;
    let pod_name = format!("{name}-0");
    wait_for(&namespace.api::<Pod>(), &pod_name, TIMEOUT, |_| true).await?;
    let pod = raw_json::<Pod>(client, namespace.name(), &pod_name).await?;
    let stateful_set = raw_json::<StatefulSet>(client, namespace.name(), name).await?;
    Ok((pod, stateful_set))
}

/// Asserts that every container of the template is in the pod byte for byte.
fn assert_template_containers_unchanged(pod: &Value, stateful_set: &Value) {
    let template = &stateful_set["spec"]["template"]["spec"];
    for list in ["containers", "initContainers"] {
        for name in names(&template[list]) {
            let expected =
                serde_json::to_string(named(&template[list], &name).expect("in template"))
                    .expect("serialise");
            let actual = serde_json::to_string(named(&pod["spec"][list], &name).expect("in pod"))
                .expect("serialise");
            assert_eq!(actual, expected, "{list} entry {name} changed");
        }
    }
}

#[tokio::test]
async fn stateful_set_pod_gets_sidecar() -> anyhow::Result<()> {
    let client = connect().await?;
    let namespace = namespace_with_account(&client, "webhook-inject").await?;
    let config = test_config(namespace.name(), SshPolicy::Annotated, free_port()?);
    let webhook = RunningWebhook::start(&client, config).await?;

    let (pod, stateful_set) = start_session(
        &client,
        &namespace,
        &webhook,
        amalthea_session("alice", true),
    )
    .await?;
    let spec = &pod["spec"];

    assert_eq!(
        names(&spec["containers"]),
        ["amalthea-session", "authproxy", "renku-ssh"]
    );
    assert_eq!(
        names(&spec["initContainers"]),
        ["init-workspace", "renku-ssh-install"]
    );
    assert_template_containers_unchanged(&pod, &stateful_set);
    let template = &stateful_set["spec"]["template"]["spec"];
    assert!(
        named(&template["containers"], "renku-ssh").is_none(),
        "the StatefulSet is not modified"
    );

    let main = named(&spec["containers"], "amalthea-session").expect("main container");
    let sidecar = named(&spec["containers"], "renku-ssh").expect("sidecar");
    assert_eq!(sidecar["image"], SESSION_IMAGE);
    assert_eq!(sidecar["env"], main["env"]);
    assert_eq!(sidecar["envFrom"], main["envFrom"]);
    assert_eq!(sidecar["workingDir"], main["workingDir"]);
    assert_eq!(sidecar["command"], json!(["/opt/renku-ssh/bin/renku-sshd"]));
    assert_eq!(
        sidecar["args"],
        json!([
            "--listen",
            "0.0.0.0:2222",
            "--host-key",
            "/etc/renku-ssh/hostkey/ssh_host_ed25519_key",
            "--authorized-keys",
            "/etc/renku-ssh/keys/authorized_keys",
            "--trusted-user-ca-keys",
            "/etc/renku-ssh/keys/trusted_user_ca_keys",
            "--principal",
            "alice",
        ])
    );
    assert_eq!(sidecar["ports"][0]["name"], "ssh");
    assert_eq!(sidecar["ports"][0]["containerPort"], 2222);
    let context = &sidecar["securityContext"];
    assert_eq!(context["runAsUser"], 1000);
    assert_eq!(context["runAsGroup"], 1000);
    assert_eq!(context["allowPrivilegeEscalation"], false);
    assert_eq!(context["capabilities"]["drop"], json!(["ALL"]));
    assert!(sidecar["resources"]["limits"]["memory"].is_string());

    let mounts: Vec<(&str, &str)> = sidecar["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|mount| {
            (
                mount["name"].as_str().unwrap_or(""),
                mount["mountPath"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        [
            ("workspace", "/home/jovyan/work"),
            ("shm", "/dev/shm"),
            ("renku-ssh-bin", "/opt/renku-ssh/bin"),
            ("renku-ssh-keys", "/etc/renku-ssh/keys"),
            ("renku-ssh-hostkey", "/etc/renku-ssh/hostkey"),
        ]
    );
    for mount in sidecar["volumeMounts"].as_array().expect("mounts") {
        assert!(mount.get("subPath").is_none(), "subPath mount {mount}");
    }

    let keys = named(&spec["volumes"], "renku-ssh-keys").expect("keys volume");
    assert_eq!(keys["secret"]["secretName"], "alice-ssh-keys");
    assert_eq!(keys["secret"]["optional"], true);
    assert_eq!(keys["secret"]["defaultMode"], 0o440, "the pod sets fsGroup");
    let host_key = named(&spec["volumes"], "renku-ssh-hostkey").expect("host key volume");
    assert_eq!(host_key["secret"]["secretName"], "alice-ssh-hostkey");
    assert_eq!(host_key["secret"]["optional"], true);
    assert!(named(&spec["volumes"], "renku-ssh-bin").expect("bin volume")["emptyDir"].is_object());

    let install = named(&spec["initContainers"], "renku-ssh-install").expect("install container");
    assert_eq!(install["image"], INSTALL_IMAGE);
    assert_eq!(
        install["volumeMounts"][0]["mountPath"],
        "/opt/renku-ssh/bin"
    );
    assert_eq!(webhook.admissions("injected", "annotation"), 1);

    namespace.delete_and_wait().await
}

#[tokio::test]
async fn session_without_ssh_is_untouched() -> anyhow::Result<()> {
    let client = connect().await?;
    let namespace = namespace_with_account(&client, "webhook-plain").await?;
    let config = test_config(namespace.name(), SshPolicy::Annotated, free_port()?);
    let webhook = RunningWebhook::start(&client, config).await?;

    let (pod, stateful_set) = start_session(
        &client,
        &namespace,
        &webhook,
        amalthea_session("bob", false),
    )
    .await?;
    let template = &stateful_set["spec"]["template"]["spec"];
    assert_eq!(
        names(&pod["spec"]["containers"]),
        names(&template["containers"])
    );
    assert_eq!(
        names(&pod["spec"]["initContainers"]),
        names(&template["initContainers"])
    );
    assert_eq!(pod["spec"]["volumes"], template["volumes"]);
    assert_template_containers_unchanged(&pod, &stateful_set);
    assert_eq!(
        webhook.admissions("skipped", "ssh-disabled"),
        1,
        "the webhook was asked and said no"
    );

    namespace.delete_and_wait().await
}

#[tokio::test]
async fn explicit_policy_requires_ssh_access() -> anyhow::Result<()> {
    let client = connect().await?;
    let namespace = namespace_with_account(&client, "webhook-explicit").await?;
    let config = test_config(namespace.name(), SshPolicy::Explicit, free_port()?);
    let webhook = RunningWebhook::start(&client, config).await?;

    // Under `explicit` the annotation alone does not enable SSH.
    namespace
        .api::<AmaltheaSession>()
        .create(&PostParams::default(), &amalthea_session("carol", true))
        .await?;
    let (pod, _) = create_stateful_set(&client, &namespace, "carol").await?;
    assert!(named(&pod["spec"]["containers"], "renku-ssh").is_none());

    // An SSHAccess with another name that refers to the session enables it.
    namespace
        .api::<AmaltheaSession>()
        .create(&PostParams::default(), &amalthea_session("dave", false))
        .await?;
    namespace
        .api::<api::SshAccess>()
        .create(&PostParams::default(), &ssh_access("dave-laptop", "dave"))
        .await?;
    let deadline = Instant::now() + TIMEOUT;
    while !webhook.cache.facts(namespace.name(), "dave").has_ssh_access {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the webhook cache never saw the SSHAccess"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (pod, _) = create_stateful_set(&client, &namespace, "dave").await?;
    assert!(named(&pod["spec"]["containers"], "renku-ssh").is_some());
    assert_eq!(webhook.admissions("skipped", "ssh-disabled"), 1);
    assert_eq!(webhook.admissions("injected", "ssh-access"), 1);

    namespace.delete_and_wait().await
}

#[tokio::test]
async fn pod_with_sidecar_is_not_injected_again() -> anyhow::Result<()> {
    let client = connect().await?;
    let namespace = namespace_with_account(&client, "webhook-twice").await?;
    let config = test_config(namespace.name(), SshPolicy::All, free_port()?);
    let webhook = RunningWebhook::start(&client, config).await?;

    // A pod that already carries the sidecar, for example one created from a copy of an
    // injected pod's spec.
    let stateful_set = session_stateful_set("erin");
    let mut pod_spec = stateful_set
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    let mut sidecar = pod_spec.containers[0].clone();
    sidecar.name = "renku-ssh".to_owned();
    sidecar.args = Some(vec!["--listen".to_owned(), "0.0.0.0:2222".to_owned()]);
    sidecar.ports = None;
    pod_spec.containers.push(sidecar);
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("erin-0".to_owned()),
            labels: Some(
                [
                    ("app.kubernetes.io/name", "AmaltheaSession"),
                    ("app.kubernetes.io/instance", "erin"),
                ]
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect(),
            ),
            ..Default::default()
        },
        spec: Some(pod_spec),
        ..Default::default()
    };
    let pods: Api<Pod> = namespace.api();
    let created = pods.create(&PostParams::default(), &pod).await?;
    let spec = created.spec.expect("spec");
    let sidecars = spec
        .containers
        .iter()
        .filter(|container| container.name == "renku-ssh")
        .count();
    assert_eq!(sidecars, 1);
    let init_names: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init_names, ["init-workspace"], "no install container added");
    assert_eq!(
        webhook.admissions("skipped", "already-injected"),
        1,
        "the webhook saw the pod"
    );

    // A pod injected once through the webhook is not injected a second time by reinvocation.
    let (injected, _) = create_stateful_set(&client, &namespace, "frank").await?;
    let sidecars = names(&injected["spec"]["containers"])
        .iter()
        .filter(|name| *name == "renku-ssh")
        .count();
    assert_eq!(sidecars, 1);
    assert_eq!(webhook.admissions("injected", "policy-all"), 1);

    namespace.delete_and_wait().await
}

#[tokio::test]
async fn unreachable_webhook_lets_pod_start() -> anyhow::Result<()> {
    let client = connect().await?;
    let namespace = namespace_with_account(&client, "webhook-down").await?;
    let config = test_config(namespace.name(), SshPolicy::All, free_port()?);
    let mut webhook = RunningWebhook::start(&client, config).await?;
    webhook.stop().await?;
    let refused = tokio::net::TcpStream::connect(webhook.address).await;
    assert!(refused.is_err(), "the webhook port must be closed");

    let started = Instant::now();
    let (pod, stateful_set) = create_stateful_set(&client, &namespace, "gina").await?;
    let elapsed = started.elapsed();
    assert!(named(&pod["spec"]["containers"], "renku-ssh").is_none());
    assert_template_containers_unchanged(&pod, &stateful_set);
    eprintln!("pod created {elapsed:?} after its StatefulSet with the webhook down");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");

    namespace.delete_and_wait().await
}
