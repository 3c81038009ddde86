//! Shared set-up of the operator tests: an operator running in-process per test namespace,
//! amalthea-like sessions (an AmaltheaSession plus the StatefulSet amalthea would create),
//! real OpenSSH keys, and a local server that honours the user-preferences API contract in
//! `docs/user-preferences-api.md`.

#![allow(dead_code)]

pub mod user_preferences;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use api::{AmaltheaSession, SshAccess};
use clap::Parser;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use testkit::{TEST_FIELD_MANAGER, TestNamespace, connect, install_project_crds, wait_for};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Time allowed for the operator to converge after a change.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// Connects, installs the CRDs and creates a namespace for one test.
pub async fn setup(prefix: &str) -> anyhow::Result<(Client, TestNamespace)> {
    init_logging();
    let client = connect().await?;
    install_project_crds(&client).await?;
    let namespace = TestNamespace::create(&client, prefix).await?;
    Ok((client, namespace))
}

/// Sends the operator's logs to the test output; `RUST_LOG` sets the level (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Flags every test operator gets: scoped to `namespace`, with its CA and Lease there, the
/// admin server on a free loopback port, and short Lease timings.
pub fn base_args(namespace: &str, identity: &str) -> Vec<String> {
    [
        "renku-ssh-operator",
        "--namespace",
        namespace,
        "--gateway-host",
        "ssh.renku.test",
        "--gateway-port",
        "2022",
        "--ca-secret",
        &format!("{namespace}/renku-ssh-ca"),
        "--admin-address",
        "127.0.0.1:0",
        "--lease-namespace",
        namespace,
        "--lease-identity",
        identity,
        "--lease-duration",
        "4s",
        "--lease-renew-deadline",
        "3s",
        "--lease-retry-period",
        "500ms",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// An operator running in this process.
pub struct RunningOperator {
    /// Address of its admin server.
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), operator::Error>>>,
}

impl RunningOperator {
    /// Starts an operator with `args` (including the program name).
    pub async fn start(client: &Client, args: &[String]) -> anyhow::Result<Self> {
        let config = operator::Args::try_parse_from(args)?.into_config()?;
        let running = operator::Operator::new(config, client.clone()).await?;
        let admin = running.admin_address()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(running.run(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            admin,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Starts an operator with [`base_args`] plus `extra`.
    pub async fn start_in(
        client: &Client,
        namespace: &str,
        identity: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut args = base_args(namespace, identity);
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        Self::start(client, &args).await
    }

    /// Stops the operator as SIGTERM would and waits until it has released its Lease.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .context("operator did not stop within 30 s")???;
        }
        Ok(())
    }

    /// Waits for the operator to stop on its own and returns its result.
    pub async fn wait_exit(
        mut self,
        timeout: Duration,
    ) -> anyhow::Result<Result<(), operator::Error>> {
        let task = self.task.take().context("operator already stopped")?;
        Ok(tokio::time::timeout(timeout, task)
            .await
            .context("operator is still running")??)
    }

    /// Returns the body of `GET path` on the admin server, with the status code.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let response = reqwest::get(format!("http://{}{path}", self.admin)).await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// Returns the value of the metric line that starts with `prefix`, if any.
    pub async fn metric(&self, prefix: &str) -> anyhow::Result<Option<f64>> {
        let (_, body) = self.admin_get("/metrics").await?;
        Ok(body
            .lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok()))
    }

    /// Waits until the metric line that starts with `prefix` has `value`.
    pub async fn wait_metric(&self, prefix: &str, value: f64) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let current = self.metric(prefix).await?;
            if current == Some(value) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("metric {prefix} is {current:?}, expected {value}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until this operator holds the Lease and its caches have synced.
    pub async fn wait_leading(&self) -> anyhow::Result<()> {
        self.wait_metric("renku_ssh_operator_leader ", 1.0).await?;
        self.wait_ready().await
    }

    /// Waits until `/readyz` returns 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            if self.admin_get("/readyz").await?.0 == 200 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("operator at {} did not become ready", self.admin);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Options of a test session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Value of `renku.io/safe-username`; `None` leaves the label out.
    pub user: Option<String>,
    /// Sets `ssh.renku.io/enabled: "true"`.
    pub annotated: bool,
    /// Adds the `renku-ssh` container to the pod template, as the webhook would.
    pub sidecar: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            user: Some("user-4f7a6b1e".to_owned()),
            annotated: true,
            sidecar: true,
        }
    }
}

/// Creates an AmaltheaSession and, as amalthea would, its StatefulSet (named like the session,
/// owned by it, one replica, container `amalthea-session`). The StatefulSet controller then
/// creates the pod `<name>-0`.
pub async fn create_session(
    client: &Client,
    namespace: &str,
    name: &str,
    options: &SessionOptions,
) -> anyhow::Result<AmaltheaSession> {
    let sessions = Api::<AmaltheaSession>::namespaced(client.clone(), namespace);
    let mut labels = BTreeMap::new();
    if let Some(user) = &options.user {
        labels.insert("renku.io/safe-username".to_owned(), user.clone());
    }
    let mut annotations = BTreeMap::new();
    if options.annotated {
        annotations.insert("ssh.renku.io/enabled".to_owned(), "true".to_owned());
    }
    let session: AmaltheaSession = serde_json::from_value(json!({
        "apiVersion": "amalthea.dev/v1alpha1",
        "kind": "AmaltheaSession",
        "metadata": { "name": name, "labels": labels, "annotations": annotations },
        "spec": {
            "hibernated": false,
            "session": { "image": "renku/renkulab-py:3.12", "port": 8888 },
        },
    }))?;
    let session = sessions.create(&PostParams::default(), &session).await?;

    let mut containers =
        vec![json!({ "name": "amalthea-session", "image": "renku/renkulab-py:3.12" })];
    if options.sidecar {
        containers.push(json!({ "name": "renku-ssh", "image": "renku/renku-sshd:test" }));
    }
    let pod_labels = json!({
        "app.kubernetes.io/name": "AmaltheaSession",
        "app.kubernetes.io/instance": name,
    });
    let stateful_set: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": name,
            "labels": pod_labels,
            "ownerReferences": [{
                "apiVersion": "amalthea.dev/v1alpha1",
                "kind": "AmaltheaSession",
                "name": name,
                "uid": session.uid().context("session without uid")?,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": { "matchLabels": pod_labels },
            "template": {
                "metadata": { "labels": pod_labels },
                "spec": { "containers": containers },
            },
        },
    }))?;
    Api::<StatefulSet>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &stateful_set)
        .await?;
    Ok(session)
}

/// Waits for the StatefulSet controller to create `<session>-0` and marks it Running at `ip`.
pub async fn run_session_pod(
    client: &Client,
    namespace: &str,
    session: &str,
    ip: &str,
) -> anyhow::Result<Pod> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let name = format!("{session}-0");
    wait_for(&pods, &name, CONVERGE, |_| true).await?;
    testkit::mark_pod_running(&pods, &name, ip).await
}

/// Creates a session with a running pod.
pub async fn running_session(
    client: &Client,
    namespace: &str,
    name: &str,
    options: &SessionOptions,
    ip: &str,
) -> anyhow::Result<AmaltheaSession> {
    let session = create_session(client, namespace, name, options).await?;
    run_session_pod(client, namespace, name, ip).await?;
    Ok(session)
}

/// Creates a hand-made SSHAccess from a JSON spec.
pub async fn create_access(
    client: &Client,
    namespace: &str,
    name: &str,
    spec: Value,
) -> anyhow::Result<SshAccess> {
    let object: SshAccess = serde_json::from_value(json!({
        "apiVersion": "ssh.renku.io/v1alpha1",
        "kind": "SSHAccess",
        "metadata": { "name": name },
        "spec": spec,
    }))?;
    Ok(Api::<SshAccess>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await?)
}

/// Merge-patches the spec of an SSHAccess, as `kubectl edit` would.
pub async fn patch_access_spec(
    client: &Client,
    namespace: &str,
    name: &str,
    spec: Value,
) -> anyhow::Result<SshAccess> {
    Ok(Api::<SshAccess>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await?)
}

/// Creates or replaces an Opaque Secret with one `authorized_keys` key.
pub async fn put_key_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    authorized_keys: &str,
) -> anyhow::Result<Secret> {
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name },
        "stringData": { "authorized_keys": authorized_keys },
    });
    Ok(Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply(TEST_FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?)
}

/// Returns `authorized_keys` of a Secret as text.
pub fn authorized_keys(secret: &Secret) -> String {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get("authorized_keys"))
        .map(|value| String::from_utf8_lossy(&value.0).into_owned())
        .unwrap_or_default()
}

/// Waits until the keys Secret of `session` satisfies `check` on its `authorized_keys`.
pub async fn wait_for_keys(
    client: &Client,
    namespace: &str,
    session: &str,
    check: impl Fn(&str) -> bool,
) -> anyhow::Result<Secret> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    wait_for(
        &secrets,
        &format!("{session}-ssh-keys"),
        CONVERGE,
        |secret| check(&authorized_keys(secret)),
    )
    .await
}

/// Waits until the SSHAccess `name` satisfies `check`.
pub async fn wait_for_access(
    client: &Client,
    namespace: &str,
    name: &str,
    check: impl Fn(&SshAccess) -> bool,
) -> anyhow::Result<SshAccess> {
    let accesses = Api::<SshAccess>::namespaced(client.clone(), namespace);
    wait_for(&accesses, name, CONVERGE, check).await
}

/// Returns the condition `type_` of an SSHAccess as `(status, reason, message)`.
pub fn condition(access: &SshAccess, type_: &str) -> Option<(String, String, String)> {
    let status = access.status.as_ref()?;
    api::condition::find_condition(&status.conditions, type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Returns whether the condition `type_` has `status`.
pub fn condition_is(access: &SshAccess, type_: &str, status: &str) -> bool {
    condition(access, type_).is_some_and(|(actual, _, _)| actual == status)
}

/// Returns whether the status is computed for the current generation.
pub fn observed_current(access: &SshAccess) -> bool {
    access
        .status
        .as_ref()
        .and_then(|status| status.observed_generation)
        == access.metadata.generation
}

/// Generates a key pair with the real `ssh-keygen` and returns the public key line.
pub fn ssh_keygen(directory: &Path, name: &str, key_type: &str, bits: Option<u32>) -> String {
    let path = directory.join(name);
    let mut command = std::process::Command::new("ssh-keygen");
    command
        .args(["-q", "-t", key_type, "-N", "", "-C", name, "-f"])
        .arg(&path);
    if let Some(bits) = bits {
        command.args(["-b", &bits.to_string()]);
    }
    let output = command
        .output()
        .expect("ssh-keygen runs (install openssh-client)");
    assert!(
        output.status.success(),
        "ssh-keygen -t {key_type} failed: {output:?}"
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key file");
    public.trim().to_owned()
}

/// Returns the fingerprint of a public key line as `ssh-keygen -l` prints it.
pub fn fingerprint(directory: &Path, line: &str) -> String {
    let path = directory.join(format!("fingerprint-{}.pub", rand_suffix()));
    std::fs::write(&path, format!("{line}\n")).expect("write key");
    let output = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&path)
        .output()
        .expect("ssh-keygen runs");
    assert!(output.status.success(), "ssh-keygen -lf failed: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint field")
        .to_owned()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Returns the StatefulSet and pod of a session as JSON, to prove that nothing changed them.
pub async fn session_workload(
    client: &Client,
    namespace: &str,
    session: &str,
) -> anyhow::Result<(Value, Value)> {
    let stateful_set = Api::<StatefulSet>::namespaced(client.clone(), namespace)
        .get(session)
        .await?;
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(&format!("{session}-0"))
        .await?;
    let workload = json!({
        "resourceVersion": stateful_set.metadata.resource_version,
        "generation": stateful_set.metadata.generation,
        "spec": stateful_set.spec,
    });
    let pod = json!({
        "resourceVersion": pod.metadata.resource_version,
        "spec": pod.spec,
    });
    Ok((workload, pod))
}
