//! The SSHAccess controller on the real API server: children, status, host key stability,
//! garbage collection, and convergence after a restart.

mod operator_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use api::{AmaltheaSession, SshAccess};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use operator_support::*;
use serde_json::json;
use testkit::wait_until_deleted;

fn data(secret: &Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|value| String::from_utf8_lossy(&value.0).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn access_gets_children_and_status() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-children").await?;
    let ns = namespace.name().to_owned();
    let keys = tempfile::tempdir()?;
    let laptop = ssh_keygen(keys.path(), "laptop", "ed25519", None);
    let operator =
        RunningOperator::start_in(&client, &ns, "a", &["--ssh-policy", "explicit"]).await?;
    running_session(
        &client,
        &ns,
        "alice-1",
        &SessionOptions::default(),
        "10.1.0.5",
    )
    .await?;

    create_access(
        &client,
        &ns,
        "alice-1",
        json!({
            "sessionRef": { "name": "alice-1" },
            "user": "user-4f7a6b1e",
            "authorizedKeys": [laptop],
        }),
    )
    .await?;
    let access = wait_for_access(&client, &ns, "alice-1", |access| {
        condition_is(access, "Ready", "True")
    })
    .await?;

    let secrets: Api<Secret> = namespace.api();
    let ca = secrets.get("renku-ssh-ca").await?;
    let keys_secret = secrets.get("alice-1-ssh-keys").await?;
    let host_key = secrets.get("alice-1-ssh-hostkey").await?;
    assert!(data(&ca, "ca").starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    let ca_public = data(&ca, "ca.pub");
    assert!(ca_public.starts_with("ssh-ed25519 "), "{ca_public}");
    let authorized = data(&keys_secret, "authorized_keys");
    assert!(authorized.contains(&laptop), "{authorized}");
    let trusted = data(&keys_secret, "trusted_user_ca_keys");
    assert!(
        ca_public.starts_with(trusted.trim()),
        "{trusted} vs {ca_public}"
    );
    let host_private = data(&host_key, "ssh_host_ed25519_key");
    let host_public = data(&host_key, "ssh_host_ed25519_key.pub");
    assert!(host_private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    assert!(host_public.starts_with("ssh-ed25519 "), "{host_public}");

    let status = access.status.clone().expect("status");
    assert_eq!(status.observed_generation, access.metadata.generation);
    assert_eq!(status.endpoint.as_deref(), Some("ssh.renku.test:2022"));
    assert_eq!(
        status.command.as_deref(),
        Some("ssh -p 2022 alice-1@ssh.renku.test")
    );
    let pinned = status.host_key.clone().expect("hostKey");
    assert_eq!(
        pinned.fingerprint,
        fingerprint(keys.path(), host_public.trim())
    );
    let host_key_fields: Vec<&str> = host_public.split_whitespace().take(2).collect();
    assert_eq!(
        pinned.known_hosts_line,
        format!("alice-1 {}", host_key_fields.join(" "))
    );
    assert_eq!(status.accepted_keys.len(), 1);
    assert_eq!(
        status.accepted_keys[0].fingerprint,
        fingerprint(keys.path(), &laptop)
    );
    assert_eq!(status.accepted_keys[0].source, "authorizedKeys");
    for type_ in ["KeysSynced", "SidecarInjected", "Routable"] {
        assert!(
            condition_is(&access, type_, "True"),
            "{type_}: {:?}",
            condition(&access, type_)
        );
    }
    let status_json = serde_json::to_string(&status)?;
    assert!(!status_json.contains("PRIVATE KEY"), "{status_json}");
    let private_body: String = host_private.lines().nth(1).unwrap_or_default().to_owned();
    assert!(
        !status_json.contains(&private_body),
        "status leaks the host key"
    );

    let service: Service = namespace.api().get("alice-1-ssh").await?;
    let spec = service.spec.clone().expect("service spec");
    let port = &spec.ports.clone().expect("ports")[0];
    assert_eq!(port.name.as_deref(), Some("ssh"));
    assert_eq!(port.port, 22);
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2222))
    );
    assert_eq!(
        spec.selector,
        Some(BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                "AmaltheaSession".to_owned()
            ),
            (
                "app.kubernetes.io/instance".to_owned(),
                "alice-1".to_owned()
            ),
        ]))
    );
    let policy: NetworkPolicy = namespace.api().get("alice-1-ssh").await?;
    let rule = &policy.spec.clone().expect("spec").ingress.expect("ingress")[0];
    let peer = &rule.from.clone().expect("from")[0];
    assert_eq!(
        peer.pod_selector
            .clone()
            .expect("pod selector")
            .match_labels,
        Some(BTreeMap::from([(
            "app.kubernetes.io/name".to_owned(),
            "renku-ssh-gateway".to_owned()
        )]))
    );

    let uid = access.uid().expect("uid");
    for owner in [
        keys_secret.owner_references(),
        host_key.owner_references(),
        service.owner_references(),
        policy.owner_references(),
    ] {
        assert_eq!(owner.len(), 1);
        assert_eq!(owner[0].uid, uid);
        assert_eq!(owner[0].controller, Some(true));
    }
    for object in [keys_secret.managed_fields(), service.managed_fields()] {
        assert!(
            object.iter().any(
                |entry| entry.manager.as_deref() == Some("renku-ssh-operator")
                    && entry.operation.as_deref() == Some("Apply")
            ),
            "{object:?}"
        );
    }
    operator.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn host_key_survives_reconciles_and_restarts() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-hostkey").await?;
    let ns = namespace.name().to_owned();
    let keys = tempfile::tempdir()?;
    let first_key = ssh_keygen(keys.path(), "first", "ed25519", None);
    let second_key = ssh_keygen(keys.path(), "second", "ed25519", None);
    let operator =
        RunningOperator::start_in(&client, &ns, "a", &["--ssh-policy", "explicit"]).await?;
    running_session(
        &client,
        &ns,
        "bob-1",
        &SessionOptions::default(),
        "10.1.0.6",
    )
    .await?;
    create_access(
        &client,
        &ns,
        "bob-1",
        json!({
            "sessionRef": { "name": "bob-1" },
            "user": "user-bob",
            "authorizedKeys": [first_key],
        }),
    )
    .await?;
    let ready =
        wait_for_access(&client, &ns, "bob-1", |a| condition_is(a, "Ready", "True")).await?;
    let secrets: Api<Secret> = namespace.api();
    let before = secrets.get("bob-1-ssh-hostkey").await?;
    let fingerprint_before = ready
        .status
        .and_then(|s| s.host_key)
        .expect("hostKey")
        .fingerprint;

    patch_access_spec(
        &client,
        &ns,
        "bob-1",
        json!({ "authorizedKeys": [first_key, second_key] }),
    )
    .await?;
    wait_for_keys(&client, &ns, "bob-1", |text| text.contains(&second_key)).await?;
    operator.stop().await?;
    let restarted =
        RunningOperator::start_in(&client, &ns, "b", &["--ssh-policy", "explicit"]).await?;
    patch_access_spec(
        &client,
        &ns,
        "bob-1",
        json!({ "authorizedKeys": [second_key] }),
    )
    .await?;
    let after_restart = wait_for_access(&client, &ns, "bob-1", |access| {
        observed_current(access)
            && access
                .status
                .as_ref()
                .is_some_and(|s| s.accepted_keys.len() == 1)
    })
    .await?;

    let after = secrets.get("bob-1-ssh-hostkey").await?;
    assert_eq!(after.uid(), before.uid());
    assert_eq!(after.resource_version(), before.resource_version());
    assert_eq!(after.data, before.data);
    let fingerprint_after = after_restart
        .status
        .and_then(|s| s.host_key)
        .expect("hostKey")
        .fingerprint;
    assert_eq!(fingerprint_after, fingerprint_before);
    restarted.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn deleting_session_removes_everything() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-gc").await?;
    let ns = namespace.name().to_owned();
    let operator = RunningOperator::start_in(&client, &ns, "a", &[]).await?;
    running_session(
        &client,
        &ns,
        "carol-1",
        &SessionOptions::default(),
        "10.1.0.7",
    )
    .await?;
    wait_for_access(&client, &ns, "carol-1", |a| {
        condition_is(a, "Ready", "True")
    })
    .await?;

    let sessions: Api<AmaltheaSession> = namespace.api();
    sessions
        .delete("carol-1", &DeleteParams::background())
        .await?;

    let timeout = Duration::from_secs(60);
    wait_until_deleted(&namespace.api::<SshAccess>(), "carol-1", timeout).await?;
    let secrets: Api<Secret> = namespace.api();
    wait_until_deleted(&secrets, "carol-1-ssh-keys", timeout).await?;
    wait_until_deleted(&secrets, "carol-1-ssh-hostkey", timeout).await?;
    wait_until_deleted(&namespace.api::<Service>(), "carol-1-ssh", timeout).await?;
    wait_until_deleted(&namespace.api::<NetworkPolicy>(), "carol-1-ssh", timeout).await?;
    // The CA belongs to the gateway, not to a session.
    assert!(secrets.get_opt("renku-ssh-ca").await?.is_some());
    operator.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn restart_midway_converges_without_duplicates() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-restart").await?;
    let ns = namespace.name().to_owned();
    let names: Vec<String> = (0..8).map(|i| format!("dave-{i}")).collect();
    for (index, name) in names.iter().enumerate() {
        running_session(
            &client,
            &ns,
            name,
            &SessionOptions::default(),
            &format!("10.2.0.{}", index + 2),
        )
        .await?;
    }
    let accesses: Api<SshAccess> = namespace.api();
    let first = RunningOperator::start_in(&client, &ns, "a", &["--ssh-policy", "all"]).await?;
    wait_for_access(&client, &ns, &names[0], |_| true).await?;
    first.stop().await?;
    let secrets: Api<Secret> = namespace.api();
    let host_keys_before: BTreeMap<String, String> = secrets
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|secret| secret.name_any().ends_with("-ssh-hostkey"))
        .map(|secret| (secret.name_any(), secret.uid().unwrap_or_default()))
        .collect();

    let second = RunningOperator::start_in(&client, &ns, "b", &["--ssh-policy", "all"]).await?;
    for name in &names {
        wait_for_access(&client, &ns, name, |a| condition_is(a, "Ready", "True")).await?;
    }

    let listed: BTreeSet<String> = accesses
        .list(&ListParams::default())
        .await?
        .into_iter()
        .map(|a| a.name_any())
        .collect();
    assert_eq!(listed, names.iter().cloned().collect());
    let by_session =
        ListParams::default().labels("app.kubernetes.io/managed-by=renku-ssh-operator");
    let operator_secrets = secrets.list(&by_session).await?;
    let mut per_session: BTreeMap<String, usize> = BTreeMap::new();
    for secret in &operator_secrets {
        if let Some(session) = secret.labels().get("ssh.renku.io/session") {
            *per_session.entry(session.clone()).or_default() += 1;
        }
    }
    assert_eq!(per_session.len(), names.len(), "{per_session:?}");
    assert!(
        per_session.values().all(|count| *count == 2),
        "{per_session:?}"
    );
    assert_eq!(
        namespace
            .api::<Service>()
            .list(&by_session)
            .await?
            .items
            .len(),
        names.len()
    );
    assert_eq!(
        namespace
            .api::<NetworkPolicy>()
            .list(&by_session)
            .await?
            .items
            .len(),
        names.len()
    );
    for (name, uid) in &host_keys_before {
        assert_eq!(
            secrets.get(name).await?.uid().as_deref(),
            Some(uid.as_str()),
            "{name}"
        );
    }
    second.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn missing_sidecar_and_hibernation_are_reported() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-sidecar").await?;
    let ns = namespace.name().to_owned();
    let operator = RunningOperator::start_in(&client, &ns, "a", &[]).await?;
    let no_sidecar = SessionOptions {
        sidecar: false,
        ..SessionOptions::default()
    };
    running_session(&client, &ns, "erin-1", &no_sidecar, "10.1.0.8").await?;

    let access = wait_for_access(&client, &ns, "erin-1", |access| {
        condition(access, "SidecarInjected").is_some_and(|(_, reason, _)| reason == "NotInjected")
    })
    .await?;
    let (status, _, message) = condition(&access, "SidecarInjected").expect("condition");
    assert_eq!(status, "False");
    assert!(
        message.contains("restart the session to add the SSH sidecar"),
        "{message}"
    );
    assert!(condition_is(&access, "Ready", "False"));
    let events: Api<Event> = namespace.api();
    let event = wait_for_event(&events, "erin-1", "SidecarMissing").await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));

    let sessions: Api<AmaltheaSession> = namespace.api();
    sessions
        .patch(
            "erin-1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "hibernated": true } })),
        )
        .await?;
    let access = wait_for_access(&client, &ns, "erin-1", |access| {
        condition(access, "Routable").is_some_and(|(_, reason, _)| reason == "Hibernated")
    })
    .await?;
    assert!(condition_is(&access, "Routable", "False"));
    operator.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn unusable_session_name_is_reported() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-invalid").await?;
    let ns = namespace.name().to_owned();
    let operator =
        RunningOperator::start_in(&client, &ns, "a", &["--ssh-policy", "explicit"]).await?;
    // Both are valid DNS labels, which the schema accepts, but `<session>-ssh` would not be a
    // valid Service name.
    let long_name = format!("s{}", "x".repeat(60));
    for (access_name, session) in [("digit", "1-session"), ("long", long_name.as_str())] {
        create_access(
            &client,
            &ns,
            access_name,
            json!({ "sessionRef": { "name": session }, "user": "user-x" }),
        )
        .await?;
        let access = wait_for_access(&client, &ns, access_name, |a| {
            condition(a, "Ready").is_some_and(|(_, reason, _)| reason == "InvalidSpec")
        })
        .await?;
        let (status, _, message) = condition(&access, "Ready").expect("Ready");
        assert_eq!(status, "False");
        assert!(message.contains(session), "{message}");
        wait_for_event(&namespace.api(), access_name, "InvalidSpec").await?;
    }
    let services = namespace
        .api::<Service>()
        .list(&ListParams::default())
        .await?;
    assert!(services.items.is_empty());
    operator.stop().await?;
    namespace.delete_and_wait().await
}

/// Waits for an Event with `reason` about the object named `regarding`.
pub async fn wait_for_event(
    events: &Api<Event>,
    regarding: &str,
    reason: &str,
) -> anyhow::Result<Event> {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let found = events
            .list(&ListParams::default())
            .await?
            .into_iter()
            .find(|event| {
                event.reason.as_deref() == Some(reason)
                    && event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
            });
        if let Some(event) = found {
            return Ok(event);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("no {reason} Event about {regarding}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn stops_at_any_moment_of_start_up() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-early-stop").await?;
    let ns = namespace.name().to_owned();
    running_session(
        &client,
        &ns,
        "erin-1",
        &SessionOptions::default(),
        "10.1.0.9",
    )
    .await?;
    // A stop can land while the caches are still listing; each start-up stage must give way.
    for delay_ms in [0, 20, 50, 100, 200, 400, 800] {
        let operator = RunningOperator::start_in(&client, &ns, "early", &[]).await?;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        operator
            .stop()
            .await
            .with_context(|| format!("stop {delay_ms} ms after start"))?;
    }
    namespace.delete_and_wait().await
}
