//! The real operator and gateway binaries started with the chart's settings: the environment
//! of the installed Deployments and the tokens of the chart's ServiceAccounts. Both run on
//! loopback against the local control plane. With only the chart's RBAC, the operator takes its
//! Lease, creates the CA and webhook Secrets and fills the webhook's caBundle, and the gateway
//! becomes ready and presents the host key the chart generated.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use serde_json::{Value, json};
use testkit::{
    ChartInstall, TestNamespace, connect, install_project_crds, merge_values, test_values,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Time each component gets to reach each state.
const STARTUP: Duration = Duration::from_secs(60);

/// Builds the binaries of `packages` with cargo and returns their paths in order.
fn build_binaries(packages: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(testkit::workspace_root())
        .args(["build", "--message-format=json"]);
    for package in packages {
        command.args(["-p", package, "--bin", package]);
    }
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !output.status.success() {
        bail!("cargo build of {packages:?} failed");
    }
    let mut paths = Vec::new();
    for package in packages {
        let path = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|message| {
                message["target"]["name"] == *package && message["executable"].is_string()
            })
            .and_then(|message| message["executable"].as_str().map(PathBuf::from))
            .with_context(|| format!("cargo build printed no executable for {package}"))?;
        paths.push(path);
    }
    Ok(paths)
}

fn free_address() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// A child process that is killed when dropped, with its output in a file.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(
        name: &'static str,
        binary: &Path,
        env: &[(String, String)],
        kubeconfig: &Path,
    ) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("renku-ssh-{name}-{}.log", std::process::id()));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .env_clear()
            .envs(
                env.iter()
                    .map(|(key, value)| (key.as_str(), value.as_str())),
            )
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self { name, child, log })
    }

    /// Fails with the process's output when it has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let output = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("{} exited with {status}; output:\n{output}", self.name);
        }
        Ok(())
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Returns the container's environment as the kubelet would set it for a pod named
/// `pod_name` in `namespace`, with the listen addresses in `addresses` replaced.
fn container_env(
    deployment: &Deployment,
    pod_name: &str,
    namespace: &str,
    addresses: &[(&str, &str)],
) -> anyhow::Result<Vec<(String, String)>> {
    let spec = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref());
    let container = spec
        .and_then(|spec| spec.containers.first())
        .context("Deployment without a container")?;
    let mut env = Vec::new();
    for variable in container.env.iter().flatten() {
        let value = match (&variable.value, &variable.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(source)) => match source
                .field_ref
                .as_ref()
                .map(|field| field.field_path.as_str())
            {
                Some("metadata.name") => pod_name.to_owned(),
                Some("metadata.namespace") => namespace.to_owned(),
                other => bail!(
                    "{} comes from {other:?}, which this test does not resolve",
                    variable.name
                ),
            },
            (None, None) => String::new(),
        };
        let value = addresses
            .iter()
            .find(|(name, _)| *name == variable.name)
            .map_or(value, |(_, address)| (*address).to_owned());
        env.push((variable.name.clone(), value));
    }
    Ok(env)
}

/// Returns the HTTP status code of `GET path` on `address`.
async fn http_status(address: &str, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `check` every 250 ms until it returns true, failing when `process` exits or after
/// [`STARTUP`].
async fn wait_until<F, Fut>(process: &mut Process, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + STARTUP;
    loop {
        process.check_running()?;
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "timed out after {STARTUP:?} waiting for {what}; {} output:\n{}",
                process.name,
                process.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn secret_exists(client: &Client, namespace: &str, name: &str) -> anyhow::Result<bool> {
    Ok(Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .is_some())
}

fn secret_text(secret: &Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn binaries_start_with_chart_settings() -> anyhow::Result<()> {
    let client = connect().await?;
    install_project_crds(&client).await?;
    let namespace = TestNamespace::create(&client, "helm-run").await?;
    let sessions = TestNamespace::create(&client, "helm-run-sessions").await?;
    let ns = namespace.name();
    // The operator watches only the sessions namespace, so it cannot touch other tests' objects.
    let mut values = test_values(ns);
    merge_values(
        &mut values,
        &json!({ "sessions": { "namespace": sessions.name() } }),
    );
    let install = ChartInstall::install(&client, ns, &values).await?;
    let fullname = install.fullname();
    let binaries = build_binaries(&["renku-ssh-operator", "renku-ssh-gateway"])?;

    let deployments: Api<Deployment> = namespace.api();
    let operator_admin = free_address()?;
    let webhook_address = free_address()?;
    let operator_env = container_env(
        &deployments.get(&format!("{fullname}-operator")).await?,
        "operator-0",
        ns,
        &[
            ("RENKU_SSH_ADMIN_ADDRESS", &operator_admin),
            ("RENKU_SSH_WEBHOOK_ADDRESS", &webhook_address),
        ],
    )?;
    let mut operator = Process::spawn(
        "operator",
        &binaries[0],
        &operator_env,
        install.operator_kubeconfig(),
    )?;

    let lease_name = format!("{fullname}-operator");
    let leases: Api<Lease> = namespace.api();
    wait_until(&mut operator, "the leader Lease", || async {
        let lease = leases.get_opt(&lease_name).await?;
        Ok(lease
            .and_then(|lease| lease.spec)
            .and_then(|spec| spec.holder_identity)
            .as_deref()
            == Some("operator-0"))
    })
    .await?;
    let ca_name = format!("{fullname}-gateway-ca");
    wait_until(&mut operator, "the CA Secret", || {
        secret_exists(&client, ns, &ca_name)
    })
    .await?;
    let tls_name = format!("{fullname}-webhook-tls");
    wait_until(&mut operator, "the webhook certificate Secret", || {
        secret_exists(&client, ns, &tls_name)
    })
    .await?;
    let configurations = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let configuration_name = format!("{fullname}-webhook");
    wait_until(
        &mut operator,
        "caBundle in the MutatingWebhookConfiguration",
        || async {
            let configuration = configurations.get(&configuration_name).await?;
            let webhooks = configuration.webhooks.unwrap_or_default();
            Ok(webhooks
                .first()
                .and_then(|webhook| webhook.client_config.ca_bundle.as_ref())
                .is_some())
        },
    )
    .await?;
    wait_until(&mut operator, "operator /readyz", || async {
        Ok(http_status(&operator_admin, "/readyz").await == Some(200))
    })
    .await?;

    let gateway_admin = free_address()?;
    let gateway_listen = free_address()?;
    let gateway_env = container_env(
        &deployments.get(&format!("{fullname}-gateway")).await?,
        "gateway-0",
        ns,
        &[
            ("RENKU_SSH_GATEWAY_ADMIN_ADDRESS", &gateway_admin),
            ("RENKU_SSH_GATEWAY_LISTEN", &gateway_listen),
        ],
    )?;
    let mut gateway = Process::spawn(
        "gateway",
        &binaries[1],
        &gateway_env,
        install.gateway_kubeconfig(),
    )?;
    wait_until(&mut gateway, "gateway /readyz", || async {
        Ok(http_status(&gateway_admin, "/readyz").await == Some(200))
    })
    .await?;

    // The gateway presents the host key the chart generated.
    let host_key = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&format!("{fullname}-gateway-host-key"))
        .await?;
    let expected = secret_text(&host_key, "ssh_host_ed25519_key.pub");
    let expected_key = expected
        .split_whitespace()
        .nth(1)
        .context("public key line without key")?;
    let (host, port) = gateway_listen
        .rsplit_once(':')
        .context("address without port")?;
    let scan = Command::new("ssh-keyscan")
        .args(["-t", "ed25519", "-p", port, host])
        .output()?;
    let scanned = String::from_utf8_lossy(&scan.stdout);
    assert!(
        scanned
            .lines()
            .any(|line| line.split_whitespace().nth(2) == Some(expected_key)),
        "ssh-keyscan output {scanned:?} lacks the chart's host key {expected_key}"
    );
    operator.check_running()?;
    gateway.check_running()?;

    drop(gateway);
    drop(operator);
    install.uninstall().await?;
    sessions.delete_and_wait().await?;
    namespace.delete_and_wait().await
}
