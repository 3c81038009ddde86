//! Load generator for `bench/operator/run.sh`. It creates sessions the way amalthea and a
//! kubelet would: an annotated AmaltheaSession, its pod `<name>-0` with the SSH sidecar
//! container, and the pod's status written as Running with an IP. Then it waits until every
//! SSHAccess is Ready.
//! Pod IPs are status data only; nothing connects to them.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use api::{AmaltheaSession, SshAccess};
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::time::Instant;

#[derive(Parser)]
#[command(about = "Creates load for the operator benchmark on the local control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the namespace and waits for its default ServiceAccount.
    Prepare {
        /// Namespace to create.
        #[arg(long)]
        namespace: String,
    },
    /// Creates sessions with running pods and waits until every SSHAccess is Ready.
    Load {
        /// Namespace to fill.
        #[arg(long)]
        namespace: String,
        /// Number of sessions.
        #[arg(long)]
        sessions: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 32)]
        parallel: usize,
        /// Seconds to wait for every SSHAccess to be Ready.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
    },
    /// Deletes the namespace and waits until it is gone.
    Cleanup {
        /// Namespace to delete.
        #[arg(long)]
        namespace: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = testkit::connect().await?;
    match cli.command {
        Command::Prepare { namespace } => prepare(&client, &namespace).await,
        Command::Load {
            namespace,
            sessions,
            parallel,
            timeout,
        } => {
            load(
                &client,
                &namespace,
                sessions,
                parallel,
                Duration::from_secs(timeout),
            )
            .await
        }
        Command::Cleanup { namespace } => cleanup(&client, &namespace).await,
    }
}

async fn prepare(client: &Client, namespace: &str) -> anyhow::Result<()> {
    testkit::install_project_crds(client).await?;
    let object: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": namespace, "labels": { "test.renku-ssh.io/owned": "true" } },
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &object)
        .await?;
    // Pods are admitted only once the controller manager made the default ServiceAccount.
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    testkit::wait_for(&accounts, "default", Duration::from_secs(60), |_| true).await?;
    Ok(())
}

fn session_name(index: usize) -> String {
    format!("bench-{index:05}")
}

fn pod_ip(index: usize) -> String {
    format!(
        "10.{}.{}.{}",
        100 + index / 65536,
        (index / 256) % 256,
        index % 256
    )
}

async fn create_session(client: &Client, namespace: &str, index: usize) -> anyhow::Result<()> {
    let name = session_name(index);
    let session: AmaltheaSession = serde_json::from_value(json!({
        "apiVersion": "amalthea.dev/v1alpha1",
        "kind": "AmaltheaSession",
        "metadata": {
            "name": name,
            "labels": { "renku.io/safe-username": format!("user-{}", index % 97) },
            "annotations": { "ssh.renku.io/enabled": "true" },
        },
        "spec": { "hibernated": false, "session": { "image": "renku/renkulab-py:3.12" } },
    }))?;
    Api::<AmaltheaSession>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &session)
        .await
        .with_context(|| format!("creating session {name}"))?;
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name", "AmaltheaSession".to_owned()),
        ("app.kubernetes.io/instance", name.clone()),
    ]);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": format!("{name}-0"), "labels": labels },
        "spec": { "containers": [
            { "name": "amalthea-session", "image": "renku/renkulab-py:3.12" },
            { "name": "renku-ssh", "image": "renku/renku-sshd:bench" },
        ] },
    }))?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    pods.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod of {name}"))?;
    testkit::mark_pod_running(&pods, &format!("{name}-0"), &pod_ip(index)).await?;
    Ok(())
}

async fn count_ready(accesses: &Api<SshAccess>) -> anyhow::Result<usize> {
    let mut ready = 0;
    let mut params = ListParams::default().limit(500);
    loop {
        let page = accesses.list(&params).await?;
        ready += page
            .items
            .iter()
            .filter(|access| {
                access.status.as_ref().is_some_and(|status| {
                    api::condition::is_condition_true(&status.conditions, api::condition::READY)
                })
            })
            .count();
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(ready),
        }
    }
}

async fn load(
    client: &Client,
    namespace: &str,
    sessions: usize,
    parallel: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    futures::stream::iter(0..sessions)
        .map(|index| create_session(client, namespace, index))
        .buffer_unordered(parallel)
        .try_collect::<Vec<()>>()
        .await?;
    let created = started.elapsed();
    println!("sessions_created {sessions} {:.1}", created.as_secs_f64());

    let accesses = Api::<SshAccess>::namespaced(client.clone(), namespace);
    let poll = if sessions > 2000 {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(1)
    };
    let mut last_report = Instant::now();
    loop {
        // A list can fail while the API server is busy; the next poll tries again.
        let ready = match count_ready(&accesses).await {
            Ok(ready) => ready,
            Err(error) => {
                eprintln!("listing SSHAccess objects failed, retrying: {error:#}");
                0
            }
        };
        if ready >= sessions {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "{ready} of {sessions} Ready after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "only {ready} of {sessions} SSHAccess objects Ready after {timeout:?}"
        );
        tokio::time::sleep(poll).await;
    }
    let all_ready = started.elapsed();
    println!(
        "all_ready {sessions} {:.1} {:.1}",
        all_ready.as_secs_f64(),
        (all_ready - created).as_secs_f64()
    );
    Ok(())
}

async fn cleanup(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let namespaces = Api::<Namespace>::all(client.clone());
    if namespaces.get_opt(namespace).await?.is_some() {
        namespaces
            .delete(namespace, &DeleteParams::background())
            .await?;
        testkit::wait_until_deleted(&namespaces, namespace, Duration::from_secs(1800)).await?;
    }
    Ok(())
}
