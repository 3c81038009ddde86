//! Leader election between two operators on the real API server: only the Lease holder
//! writes, and the other takes over when the leader shuts down.

mod operator_support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{Patch, PatchParams};
use operator_support::*;
use serde_json::json;

#[tokio::test]
async fn only_leader_writes_and_follower_takes_over() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-leader").await?;
    let ns = namespace.name().to_owned();
    let leases: Api<Lease> = namespace.api();
    let first = RunningOperator::start_in(&client, &ns, "replica-a", &[]).await?;
    first.wait_leading().await?;
    let second = RunningOperator::start_in(&client, &ns, "replica-b", &[]).await?;
    // A follower reports ready while it waits for the Lease.
    second.wait_ready().await?;

    let lease = leases.get("renku-ssh-operator").await?;
    assert_eq!(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some("replica-a")
    );
    assert_eq!(first.metric("renku_ssh_operator_leader ").await?, Some(1.0));
    assert_eq!(
        second.metric("renku_ssh_operator_leader ").await?,
        Some(0.0)
    );

    running_session(
        &client,
        &ns,
        "olga-1",
        &SessionOptions::default(),
        "10.5.0.2",
    )
    .await?;
    wait_for_access(&client, &ns, "olga-1", |a| condition_is(a, "Ready", "True")).await?;
    let leader_reconciles = first
        .metric("renku_ssh_operator_reconciles_total{controller=\"sshaccess\",result=\"success\"}")
        .await?;
    assert!(
        leader_reconciles.is_some_and(|count| count >= 1.0),
        "{leader_reconciles:?}"
    );
    let follower_reconciles = second.metric("renku_ssh_operator_reconciles_total").await?;
    assert_eq!(follower_reconciles, None, "the follower reconciled");
    let events: Api<k8s_openapi::api::events::v1::Event> = namespace.api();
    for event in events.list(&Default::default()).await? {
        assert_ne!(
            event.reporting_instance.as_deref(),
            Some("replica-b"),
            "{event:?}"
        );
    }

    // The leader releases the Lease on shutdown, so the follower takes over at once.
    first.stop().await?;
    running_session(
        &client,
        &ns,
        "olga-2",
        &SessionOptions::default(),
        "10.5.0.3",
    )
    .await?;
    wait_for_access(&client, &ns, "olga-2", |a| condition_is(a, "Ready", "True")).await?;
    let lease = leases.get("renku-ssh-operator").await?;
    assert_eq!(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some("replica-b")
    );
    assert_eq!(
        lease.spec.as_ref().and_then(|s| s.lease_transitions),
        Some(2)
    );
    second.wait_leading().await?;
    second.stop().await?;
    let lease = leases.get("renku-ssh-operator").await?;
    assert_eq!(
        lease.spec.as_ref().and_then(|s| s.holder_identity.clone()),
        None
    );
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn leader_exits_when_lease_is_taken() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-lost").await?;
    let ns = namespace.name().to_owned();
    let leases: Api<Lease> = namespace.api();
    let operator = RunningOperator::start_in(&client, &ns, "replica-a", &[]).await?;
    operator.wait_leading().await?;

    // Another holder writes the Lease, as a replica that wrongly judged it expired would.
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let patch = json!({ "spec": { "holderIdentity": "intruder", "renewTime": now } });
    leases
        .patch(
            "renku-ssh-operator",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;

    let result = operator.wait_exit(Duration::from_secs(20)).await?;
    assert!(
        matches!(result, Err(operator::Error::LeadershipLost)),
        "{result:?}"
    );
    let lease = leases.get("renku-ssh-operator").await?;
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("intruder")
    );
    namespace.delete_and_wait().await
}
