//! Set-up shared by the gateway tests: per test a namespace, the operator and the gateway
//! running in-process, sessions whose pod is a [`PodSandbox`] running the real `renku-sshd`
//! from the Secrets the operator wrote, and the real OpenSSH client. `helm_binaries.rs` uses
//! the session and client helpers with the operator and gateway binaries instead.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use api::{AmaltheaSession, SshAccess};
use clap::Parser;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use serde_json::json;
use testkit::{
    PodSandbox, TEST_FIELD_MANAGER, TestNamespace, connect, install_project_crds, wait_for,
};
use tokio::sync::oneshot;

/// Time allowed for the operator and the gateway's caches to converge.
pub const CONVERGE: Duration = Duration::from_secs(30);
/// Owner label of an AmaltheaSession.
const OWNER_LABEL: &str = "renku.io/safe-username";
/// Annotation that enables SSH for a session under the `annotated` SSH policy.
const ENABLED_ANNOTATION: &str = "ssh.renku.io/enabled";

/// Fails the test with an installation hint when an OpenSSH tool is missing.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` not found in PATH: install openssh-client (scripts/install-deps.sh does)"
    );
}

/// Runs a command and returns its output.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

/// Generates an ed25519 key pair with `ssh-keygen`; returns the private key path.
pub fn generate_key(dir: &Path, name: &str) -> PathBuf {
    require_tool("ssh-keygen");
    let path = dir.join(name);
    let output = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path));
    assert!(output.status.success(), "ssh-keygen failed: {output:?}");
    path
}

/// Returns the public key line of a private key file.
pub fn public_key(private_key: &Path) -> String {
    let path = PathBuf::from(format!("{}.pub", private_key.display()));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
        .trim()
        .to_owned()
}

/// Returns the SHA-256 fingerprint of a key file, as `ssh-keygen -l` prints it.
pub fn fingerprint(private_key: &Path) -> String {
    let public = format!("{}.pub", private_key.display());
    let output = run(Command::new("ssh-keygen").args(["-l", "-E", "sha256", "-f", &public]));
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// The gateway, running in this process.
pub struct RunningGateway {
    /// SSH address.
    pub address: SocketAddr,
    /// The gateway's metrics.
    pub metrics: Registry,
    /// Readiness.
    pub health: admin::Health,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningGateway {
    /// Returns the metrics in the text exposition format.
    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.metrics);
        text
    }

    /// Stops the gateway as SIGTERM would and waits for it.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One test's world: a namespace with the operator, the gateway, keys and client files.
pub struct Env {
    /// Client for the local control plane.
    pub client: Client,
    /// The test namespace.
    pub namespace: TestNamespace,
    /// The gateway.
    pub gateway: RunningGateway,
    /// Directory of keys and client configuration.
    pub dir: tempfile::TempDir,
    operator_stop: Option<oneshot::Sender<()>>,
}

impl Env {
    /// Starts the operator (policy `explicit`: SSHAccess objects are made by the tests) and
    /// the gateway with `gateway_flags` added to its defaults, in a new namespace.
    pub async fn start(prefix: &str, gateway_flags: &[&str]) -> anyhow::Result<Self> {
        require_tool("ssh");
        init_logging();
        let client = connect().await?;
        install_project_crds(&client).await?;
        let namespace = TestNamespace::create(&client, prefix).await?;
        let name = namespace.name().to_owned();
        let dir = tempfile::Builder::new().prefix("rssh-gw-").tempdir()?;
        let ca_secret = format!("{name}/renku-ssh-gateway-ca");

        let operator_args = [
            "renku-ssh-operator",
            "--namespace",
            &name,
            "--ssh-policy",
            "explicit",
            "--gateway-host",
            "127.0.0.1",
            "--ca-secret",
            &ca_secret,
            "--admin-address",
            "127.0.0.1:0",
            "--lease-namespace",
            &name,
        ];
        let config = operator::Args::try_parse_from(operator_args)?.into_config()?;
        let running = operator::Operator::new(config, client.clone()).await?;
        let (operator_stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(running.run(async move {
            let _ = stopped.await;
        }));

        let host_key = generate_key(dir.path(), "gateway_host_key");
        let host_key_text = host_key.display().to_string();
        let mut args = vec![
            "renku-ssh-gateway",
            "--listen",
            "127.0.0.1:0",
            "--host-key",
            &host_key_text,
            "--ca-secret",
            &ca_secret,
            "--watch-namespace",
            &name,
            "--shutdown-grace",
            "1s",
        ];
        args.extend_from_slice(gateway_flags);
        let config = gateway::config::Args::try_parse_from(args)?.into_config()?;
        let mut metrics = Registry::default();
        let health = admin::Health::default();
        let gateway =
            gateway::Gateway::start(&config, client.clone(), &mut metrics, health.clone()).await?;
        let address = gateway.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(async move {
            let _ = stopped.await;
        }));
        let deadline = tokio::time::Instant::now() + CONVERGE;
        while !health.is_ready() {
            if tokio::time::Instant::now() > deadline {
                bail!("the gateway did not become ready: is the CA Secret {ca_secret} created?");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let known_host = format!("[127.0.0.1]:{} {}", address.port(), public_key(&host_key));
        std::fs::write(dir.path().join("known_hosts"), format!("{known_host}\n"))?;
        let gateway = RunningGateway {
            address,
            metrics,
            health,
            stop: Some(stop),
            task: Some(task),
        };
        Ok(Self {
            client,
            namespace,
            gateway,
            dir,
            operator_stop: Some(operator_stop),
        })
    }

    /// Returns the namespace name.
    pub fn ns(&self) -> &str {
        self.namespace.name()
    }

    /// Generates a user key in the test directory.
    pub fn key(&self, name: &str) -> PathBuf {
        generate_key(self.dir.path(), name)
    }

    /// Writes an OpenSSH client configuration for `key` and returns its path. Host `gateway`
    /// is the gateway; every other host is checked against the test's known_hosts file.
    pub fn ssh_config(&self, key: &Path) -> PathBuf {
        write_ssh_config(
            key,
            self.gateway.address.port(),
            &self.dir.path().join("known_hosts"),
        )
    }

    /// Returns `ssh -F <config for key>`.
    pub fn ssh(&self, key: &Path) -> Command {
        let mut command = Command::new("ssh");
        command
            .arg("-F")
            .arg(self.ssh_config(key))
            .stdin(Stdio::null());
        command
    }

    /// Appends a line to the test's known_hosts file.
    pub fn trust(&self, line: &str) {
        let path = self.dir.path().join("known_hosts");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(line);
        text.push('\n');
        std::fs::write(path, text).expect("write known_hosts");
    }

    /// Creates a running session owned by `user` whose keys come from Secret
    /// `<name>-user-keys` with `keys` as its authorized_keys, on sandbox subnet `subnet`, and
    /// waits until its SSHAccess is Ready.
    pub async fn session(
        &self,
        name: &str,
        user: &str,
        keys: &str,
        subnet: u8,
    ) -> anyhow::Result<TestSession> {
        let namespace = self.ns();
        put_key_secret(&self.client, namespace, &format!("{name}-user-keys"), keys).await?;
        create_session(&self.client, namespace, name, user, false).await?;
        create_access(&self.client, namespace, name, user).await?;
        let sandbox = start_session_pod(&self.client, namespace, name, subnet).await?;
        let access = wait_access_ready(&self.client, namespace, name).await?;
        let known_hosts_line = access
            .status
            .as_ref()
            .and_then(|status| status.host_key.as_ref())
            .map(|host_key| host_key.known_hosts_line.clone())
            .context("Ready SSHAccess without hostKey")?;
        Ok(TestSession {
            name: name.to_owned(),
            user: user.to_owned(),
            sandbox,
            known_hosts_line,
        })
    }

    /// Replaces the keys in Secret `<session>-user-keys`.
    pub async fn set_user_keys(&self, session: &str, keys: &str) -> anyhow::Result<()> {
        put_key_secret(
            &self.client,
            self.ns(),
            &format!("{session}-user-keys"),
            keys,
        )
        .await?;
        Ok(())
    }

    /// Waits until the SSHAccess of `session` accepts exactly the keys with `fingerprints`.
    pub async fn wait_accepted(
        &self,
        session: &str,
        fingerprints: &[String],
    ) -> anyhow::Result<()> {
        let accesses = Api::<SshAccess>::namespaced(self.client.clone(), self.ns());
        let mut expected: Vec<String> = fingerprints.to_vec();
        expected.sort();
        wait_for(&accesses, session, CONVERGE, |access| {
            let mut accepted: Vec<String> = access
                .status
                .as_ref()
                .map(|status| {
                    status
                        .accepted_keys
                        .iter()
                        .map(|key| key.fingerprint.clone())
                        .collect()
                })
                .unwrap_or_default();
            accepted.sort();
            accepted == expected
        })
        .await?;
        Ok(())
    }

    /// Sets `spec.hibernated` of a session.
    pub async fn hibernate(&self, session: &str, hibernated: bool) -> anyhow::Result<()> {
        Api::<AmaltheaSession>::namespaced(self.client.clone(), self.ns())
            .patch(
                session,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "hibernated": hibernated } })),
            )
            .await?;
        Ok(())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(stop) = self.operator_stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A session with its sandboxed pod.
pub struct TestSession {
    /// Session name, also the SSH user name.
    pub name: String,
    /// Owner subject.
    pub user: String,
    /// The pod.
    pub sandbox: PodSandbox,
    /// `status.hostKey.knownHostsLine` of its SSHAccess.
    pub known_hosts_line: String,
}

fn condition_true(access: &SshAccess, kind: &str) -> bool {
    access.status.as_ref().is_some_and(|status| {
        status
            .conditions
            .iter()
            .any(|condition| condition.type_ == kind && condition.status == "True")
    })
}

/// Writes an OpenSSH client configuration for `key` next to it and returns its path. Host
/// `gateway` is 127.0.0.1:`gateway_port`, and every host key is checked against `known_hosts`.
pub fn write_ssh_config(key: &Path, gateway_port: u16, known_hosts: &Path) -> PathBuf {
    let path = PathBuf::from(format!("{}.config", key.display()));
    let text = format!(
        "Host gateway\n  HostName 127.0.0.1\n  Port {gateway_port}\n\nHost *\n  UserKnownHostsFile {known}\n  \
         GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  IdentitiesOnly yes\n  \
         IdentityFile {key}\n  IdentityAgent none\n  BatchMode yes\n  ConnectTimeout 10\n  \
         ServerAliveInterval 5\n",
        known = known_hosts.display(),
        key = key.display(),
    );
    std::fs::write(&path, text).expect("write ssh config");
    path
}

/// Runs the pod `<name>-0` of session `name` in place of kubelet. It waits for the session's key
/// and host key Secrets, mounts them into a [`PodSandbox`] on subnet `subnet`, starts
/// `renku-sshd` there and marks the pod Running at the sandbox's address.
pub async fn start_session_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    subnet: u8,
) -> anyhow::Result<PodSandbox> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    wait_for(&secrets, &format!("{name}-ssh-keys"), CONVERGE, |_| true).await?;
    wait_for(&secrets, &format!("{name}-ssh-hostkey"), CONVERGE, |_| true).await?;
    let mut sandbox = PodSandbox::create(subnet)?;
    let keys_dir = sandbox
        .mount_secret(client, namespace, &format!("{name}-ssh-keys"), "keys")
        .await?;
    let host_dir = sandbox
        .mount_secret(client, namespace, &format!("{name}-ssh-hostkey"), "hostkey")
        .await?;
    sandbox
        .start_sshd(
            &host_dir.join("ssh_host_ed25519_key"),
            &keys_dir.join("authorized_keys"),
            &keys_dir.join("trusted_user_ca_keys"),
            name,
        )
        .await?;

    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let pod_name = format!("{name}-0");
    wait_for(&pods, &pod_name, CONVERGE, |_| true).await?;
    testkit::mark_pod_running(&pods, &pod_name, &sandbox.pod_ip().to_string()).await?;
    Ok(sandbox)
}

/// Waits until SSHAccess `name` has the condition Ready=True and returns it.
pub async fn wait_access_ready(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<SshAccess> {
    let accesses = Api::<SshAccess>::namespaced(client.clone(), namespace);
    wait_for(&accesses, name, CONVERGE, |access| {
        condition_true(access, "Ready")
    })
    .await
    .context("waiting for the SSHAccess to become Ready")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Creates or replaces an Opaque Secret with one `authorized_keys` key.
pub async fn put_key_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    keys: &str,
) -> anyhow::Result<()> {
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name },
        "stringData": { "authorized_keys": keys },
    });
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply(TEST_FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// Creates an AmaltheaSession owned by `user` and, as amalthea would, its StatefulSet with the
/// session container and the `renku-ssh` sidecar. The StatefulSet controller creates the pod.
/// With `ssh_enabled`, the session carries the annotation that the `annotated` SSH policy
/// selects.
pub async fn create_session(
    client: &Client,
    namespace: &str,
    name: &str,
    user: &str,
    ssh_enabled: bool,
) -> anyhow::Result<()> {
    let annotations = if ssh_enabled {
        json!({ ENABLED_ANNOTATION: "true" })
    } else {
        json!({})
    };
    let session: AmaltheaSession = serde_json::from_value(json!({
        "apiVersion": "amalthea.dev/v1alpha1",
        "kind": "AmaltheaSession",
        "metadata": {
            "name": name,
            "labels": { OWNER_LABEL: user },
            "annotations": annotations,
        },
        "spec": { "hibernated": false, "session": { "image": "renku/renkulab-py:3.12", "port": 8888 } },
    }))?;
    let session = Api::<AmaltheaSession>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &session)
        .await?;
    let labels =
        json!({ "app.kubernetes.io/name": "AmaltheaSession", "app.kubernetes.io/instance": name });
    let stateful_set: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": name,
            "labels": labels,
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
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": { "containers": [
                    { "name": "amalthea-session", "image": "renku/renkulab-py:3.12" },
                    { "name": "renku-ssh", "image": "renku/renku-sshd:test" },
                ] },
            },
        },
    }))?;
    Api::<StatefulSet>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &stateful_set)
        .await?;
    Ok(())
}

/// Creates the SSHAccess `<name>` for session `name`, owned by `user`, with keys from Secret
/// `<name>-user-keys`.
async fn create_access(
    client: &Client,
    namespace: &str,
    name: &str,
    user: &str,
) -> anyhow::Result<()> {
    let access: SshAccess = serde_json::from_value(json!({
        "apiVersion": "ssh.renku.io/v1alpha1",
        "kind": "SSHAccess",
        "metadata": { "name": name },
        "spec": {
            "sessionRef": { "name": name },
            "user": user,
            "keysFrom": [{ "secretRef": { "name": format!("{name}-user-keys") } }],
        },
    }))?;
    Api::<SshAccess>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &access)
        .await?;
    Ok(())
}

/// Output of a command as text, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Returns the files of a map, for sandbox volumes.
pub fn files(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    entries
        .iter()
        .map(|(name, content)| ((*name).to_owned(), content.as_bytes().to_vec()))
        .collect()
}
