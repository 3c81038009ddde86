//! The AmaltheaSession controller under each SSH policy, on the real API server.

mod operator_support;

use std::time::Duration;

use api::{AmaltheaSession, SshAccess};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use operator_support::*;
use serde_json::json;
use testkit::wait_until_deleted;

/// Time the operator gets to do something it must not do.
const QUIET: Duration = Duration::from_secs(3);

async fn access_names(accesses: &Api<SshAccess>) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = accesses
        .list(&ListParams::default())
        .await?
        .into_iter()
        .map(|a| a.name_any())
        .collect();
    names.sort();
    Ok(names)
}

#[tokio::test]
async fn policy_all_serves_every_session() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-all").await?;
    let ns = namespace.name().to_owned();
    let operator = RunningOperator::start_in(&client, &ns, "a", &["--ssh-policy", "all"]).await?;
    let plain = SessionOptions {
        annotated: false,
        ..SessionOptions::default()
    };
    create_session(&client, &ns, "plain-1", &plain).await?;
    create_session(&client, &ns, "annotated-1", &SessionOptions::default()).await?;

    for name in ["plain-1", "annotated-1"] {
        let access = wait_for_access(&client, &ns, name, |_| true).await?;
        assert_eq!(access.spec.user, "user-4f7a6b1e");
        assert_eq!(access.spec.session_ref.name, name);
        assert_eq!(
            access
                .labels()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("renku-ssh-operator")
        );
        let session = namespace.api::<AmaltheaSession>().get(name).await?;
        let owner = &access.owner_references()[0];
        assert_eq!(owner.kind, "AmaltheaSession");
        assert_eq!(Some(owner.uid.clone()), session.uid());
        assert_eq!(owner.controller, Some(true));
        // Without a user-preferences source the operator adds no key source.
        assert!(access.spec.keys_from.is_empty());
    }
    operator.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn policy_annotated_follows_annotation() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-annotated").await?;
    let ns = namespace.name().to_owned();
    let accesses: Api<SshAccess> = namespace.api();
    let operator = RunningOperator::start_in(&client, &ns, "a", &[]).await?;
    let plain = SessionOptions {
        annotated: false,
        ..SessionOptions::default()
    };
    create_session(&client, &ns, "plain-1", &plain).await?;
    create_session(&client, &ns, "annotated-1", &SessionOptions::default()).await?;
    // A hand-made SSHAccess for the plain session, with another name, is never touched.
    create_access(
        &client,
        &ns,
        "by-hand",
        json!({
            "sessionRef": { "name": "plain-1" },
            "user": "user-4f7a6b1e",
        }),
    )
    .await?;

    wait_for_access(&client, &ns, "annotated-1", |_| true).await?;
    tokio::time::sleep(QUIET).await;
    assert_eq!(access_names(&accesses).await?, ["annotated-1", "by-hand"]);

    let sessions: Api<AmaltheaSession> = namespace.api();
    let annotate = |value: serde_json::Value| json!({ "metadata": { "annotations": { "ssh.renku.io/enabled": value } } });
    sessions
        .patch(
            "plain-1",
            &PatchParams::default(),
            &Patch::Merge(annotate(json!("true"))),
        )
        .await?;
    wait_for_access(&client, &ns, "plain-1", |_| true).await?;

    sessions
        .patch(
            "annotated-1",
            &PatchParams::default(),
            &Patch::Merge(annotate(json!(null))),
        )
        .await?;
    wait_until_deleted(&accesses, "annotated-1", CONVERGE).await?;
    tokio::time::sleep(QUIET).await;
    assert_eq!(access_names(&accesses).await?, ["by-hand", "plain-1"]);
    operator.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn hand_made_access_is_left_alone() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-handmade").await?;
    let ns = namespace.name().to_owned();
    create_access(
        &client,
        &ns,
        "frank-1",
        json!({
            "sessionRef": { "name": "frank-1" },
            "user": "someone-else",
        }),
    )
    .await?;
    let operator = RunningOperator::start_in(&client, &ns, "a", &["--ssh-policy", "all"]).await?;
    create_session(&client, &ns, "frank-1", &SessionOptions::default()).await?;

    // The SSHAccess controller serves it, but the session controller never adopts it.
    let access = wait_for_access(&client, &ns, "frank-1", |a| a.status.is_some()).await?;
    tokio::time::sleep(QUIET).await;
    let access_now = namespace.api::<SshAccess>().get("frank-1").await?;
    assert_eq!(access_now.spec.user, "someone-else");
    assert!(access_now.owner_references().is_empty());
    assert!(
        access_now
            .labels()
            .get("app.kubernetes.io/managed-by")
            .is_none()
    );

    // Disabling SSH does not delete it either.
    namespace
        .api::<AmaltheaSession>()
        .patch(
            "frank-1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "metadata": { "annotations": { "ssh.renku.io/enabled": "false" } } }),
            ),
        )
        .await?;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        namespace.api::<SshAccess>().get("frank-1").await?.uid(),
        access.uid()
    );
    operator.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn policy_explicit_creates_nothing() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-explicit").await?;
    let ns = namespace.name().to_owned();
    let accesses: Api<SshAccess> = namespace.api();
    let operator =
        RunningOperator::start_in(&client, &ns, "a", &["--ssh-policy", "explicit"]).await?;
    running_session(
        &client,
        &ns,
        "gina-1",
        &SessionOptions::default(),
        "10.3.0.2",
    )
    .await?;

    tokio::time::sleep(QUIET).await;
    assert!(access_names(&accesses).await?.is_empty());

    // An SSHAccess made by hand is still served.
    create_access(
        &client,
        &ns,
        "gina-access",
        json!({
            "sessionRef": { "name": "gina-1" },
            "user": "user-gina",
        }),
    )
    .await?;
    wait_for_access(&client, &ns, "gina-access", |a| {
        condition_is(a, "Ready", "True")
    })
    .await?;
    assert!(
        namespace
            .api::<Secret>()
            .get_opt("gina-1-ssh-keys")
            .await?
            .is_some()
    );
    operator.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn missing_username_label_raises_event() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-nolabel").await?;
    let ns = namespace.name().to_owned();
    let operator = RunningOperator::start_in(&client, &ns, "a", &[]).await?;
    let unlabelled = SessionOptions {
        user: None,
        ..SessionOptions::default()
    };
    create_session(&client, &ns, "hank-1", &unlabelled).await?;

    let events: Api<Event> = namespace.api();
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let event = loop {
        let found = events
            .list(&ListParams::default())
            .await?
            .into_iter()
            .find(|event| {
                event.reason.as_deref() == Some("MissingSafeUsername")
                    && event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("hank-1")
            });
        if let Some(event) = found {
            break event;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no MissingSafeUsername Event"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(note.contains("renku.io/safe-username"), "{note}");
    assert!(
        namespace
            .api::<SshAccess>()
            .get_opt("hank-1")
            .await?
            .is_none()
    );
    operator.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn deleted_access_is_recreated() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-recreate").await?;
    let ns = namespace.name().to_owned();
    let accesses: Api<SshAccess> = namespace.api();
    let operator = RunningOperator::start_in(&client, &ns, "a", &[]).await?;
    create_session(&client, &ns, "ivan-1", &SessionOptions::default()).await?;
    let first = wait_for_access(&client, &ns, "ivan-1", |_| true).await?;

    accesses
        .delete("ivan-1", &kube::api::DeleteParams::default())
        .await?;
    let second =
        wait_for_access(&client, &ns, "ivan-1", |access| access.uid() != first.uid()).await?;

    assert_eq!(second.spec.user, first.spec.user);
    assert_eq!(second.owner_references(), first.owner_references());
    operator.stop().await?;
    namespace.delete_and_wait().await
}
