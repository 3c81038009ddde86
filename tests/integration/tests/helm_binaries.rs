//! The real operator and gateway binaries started with the chart's settings: the environment
//! of the installed Deployments and the tokens of the chart's ServiceAccounts. Both run on
//! loopback against the local control plane, so the chart's RBAC is what the API server
//! enforces on every request they send.
//!
//! With only the chart's RBAC, the operator takes its Lease, creates the CA and webhook Secrets
//! and fills the webhook's caBundle, and the gateway becomes ready and presents the host key
//! the chart generated. An SSH-enabled session then gets its SSHAccess, Secrets, Service and
//! NetworkPolicy from the operator, and the real `ssh` client logs in through the gateway to
//! `renku-sshd` in a [`testkit::PodSandbox`], with a key and then through the device flow (the
//! gateway records the approval as a ConfigMap). With one rule removed from the chart's Roles,
//! the login or the gateway's readiness fails and the component's log names the forbidden
//! request.
//!
//! The tests need root (network namespaces), `ip`, `ssh`, `ssh-keygen` and `ssh-keyscan`, and
//! the main test needs the local Keycloak (`scripts/keycloak.sh start`).

mod device_support;
mod gateway_support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use api::SshAccess;
use device_support::keycloak::browser::Consent;
use gateway_support::{
    create_session, describe, generate_key, public_key, require_tool, start_session_pod,
    wait_access_ready, write_ssh_config,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use testkit::{
    ChartInstall, TEST_FIELD_MANAGER, TestNamespace, connect, install_project_crds, merge_values,
    test_values, wait_for,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Time each component gets to reach each state.
const STARTUP: Duration = Duration::from_secs(60);

/// Builds the binaries of `packages` with cargo and returns their paths in order.
fn build_binaries(packages: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let mut command = testkit::cargo_command();
    command.args(["build", "--message-format=json"]);
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
    /// Starts `binary` with exactly `env` and `kubeconfig`. Its output goes to a log file named
    /// after `name` and `namespace`, so concurrent tests keep separate logs.
    fn spawn(
        name: &'static str,
        namespace: &str,
        binary: &Path,
        env: &[(String, String)],
        kubeconfig: &Path,
    ) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("renku-ssh-{namespace}-{name}.log"));
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

/// Polls the output of `process` every 250 ms until one line contains every string of
/// `needles`, and returns that line. Fails when the process exits or after [`STARTUP`].
async fn wait_for_line(process: &mut Process, needles: &[&str]) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + STARTUP;
    loop {
        process.check_running()?;
        let output = process.output();
        let found = output
            .lines()
            .find(|line| needles.iter().all(|needle| line.contains(needle)));
        if let Some(line) = found {
            return Ok(line.to_owned());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "timed out after {STARTUP:?} waiting for a line with {needles:?} in the {} \
                 output:\n{output}",
                process.name
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The chart installed as a Helm release in a new namespace, serving sessions in a second new
/// namespace only, so its operator and gateway never touch other tests' objects.
struct Release {
    client: Client,
    namespace: TestNamespace,
    sessions: TestNamespace,
    install: ChartInstall,
    /// The `renku-ssh-operator` and `renku-ssh-gateway` executables, in that order.
    binaries: Vec<PathBuf>,
}

/// A binary of the release running on loopback.
struct Component {
    process: Process,
    /// Address of the admin server (`/livez`, `/readyz`, `/metrics`).
    admin_address: String,
    /// Address of the webhook's HTTPS server (operator) or of the SSH server (gateway).
    listen_address: String,
}

impl Release {
    /// Installs the chart into namespace `<prefix>-<suffix>` with sessions in
    /// `<prefix>-sessions-<suffix>` and the device flow against `issuer`, and builds the
    /// binaries.
    async fn install(prefix: &str, issuer: &str) -> anyhow::Result<Self> {
        let client = connect().await?;
        install_project_crds(&client).await?;
        let namespace = TestNamespace::create(&client, prefix).await?;
        let sessions = TestNamespace::create(&client, &format!("{prefix}-sessions")).await?;
        let mut values = test_values(namespace.name());
        merge_values(
            &mut values,
            &json!({
                "sessions": { "namespace": sessions.name() },
                "identityProvider": { "issuer": issuer },
            }),
        );
        let install = ChartInstall::install(&client, namespace.name(), &values).await?;
        let binaries = build_binaries(&["renku-ssh-operator", "renku-ssh-gateway"])?;
        Ok(Self {
            client,
            namespace,
            sessions,
            install,
            binaries,
        })
    }

    fn ns(&self) -> &str {
        self.namespace.name()
    }

    fn sessions_ns(&self) -> &str {
        self.sessions.name()
    }

    /// Removes from the Role that the chart gives `component` (`operator` or `gateway`) in the
    /// sessions namespace the one rule whose resources contain `resource`. Call it before the
    /// binaries start, so that they never hold the permission: the API server authorizes every
    /// request against the Role as it is at that moment.
    async fn remove_rule(&self, component: &str, resource: &str) -> anyhow::Result<()> {
        let name = format!("{}-{component}", self.install.fullname());
        let roles = Api::<Role>::namespaced(self.client.clone(), self.sessions_ns());
        let mut role = roles.get(&name).await?;
        let rules = role.rules.take().unwrap_or_default();
        let before = rules.len();
        let kept: Vec<_> = rules
            .into_iter()
            .filter(|rule| !rule.resources.iter().flatten().any(|r| r == resource))
            .collect();
        if before - kept.len() != 1 {
            bail!(
                "Role {name} has {} rules for {resource}, expected exactly one: update this test \
                 to match the chart",
                before - kept.len()
            );
        }
        role.rules = Some(kept);
        role.metadata.managed_fields = None;
        roles.replace(&name, &PostParams::default(), &role).await?;
        Ok(())
    }

    /// Starts the operator with its Deployment's environment, as pod `operator-0`.
    async fn start_operator(&self) -> anyhow::Result<Component> {
        let admin_address = free_address()?;
        let listen_address = free_address()?;
        let deployments: Api<Deployment> = self.namespace.api();
        let deployment = deployments
            .get(&format!("{}-operator", self.install.fullname()))
            .await?;
        let env = container_env(
            &deployment,
            "operator-0",
            self.ns(),
            &[
                ("RENKU_SSH_ADMIN_ADDRESS", &admin_address),
                ("RENKU_SSH_WEBHOOK_ADDRESS", &listen_address),
            ],
        )?;
        let process = Process::spawn(
            "operator",
            self.ns(),
            &self.binaries[0],
            &env,
            self.install.operator_kubeconfig(),
        )?;
        Ok(Component {
            process,
            admin_address,
            listen_address,
        })
    }

    /// Starts the gateway with its Deployment's environment, as pod `gateway-0`.
    async fn start_gateway(&self) -> anyhow::Result<Component> {
        let admin_address = free_address()?;
        let listen_address = free_address()?;
        let deployments: Api<Deployment> = self.namespace.api();
        let deployment = deployments
            .get(&format!("{}-gateway", self.install.fullname()))
            .await?;
        let env = container_env(
            &deployment,
            "gateway-0",
            self.ns(),
            &[
                ("RENKU_SSH_GATEWAY_ADMIN_ADDRESS", &admin_address),
                ("RENKU_SSH_GATEWAY_LISTEN", &listen_address),
            ],
        )?;
        let process = Process::spawn(
            "gateway",
            self.ns(),
            &self.binaries[1],
            &env,
            self.install.gateway_kubeconfig(),
        )?;
        Ok(Component {
            process,
            admin_address,
            listen_address,
        })
    }

    /// Returns the public key line of the host key the chart generated for the gateway.
    async fn gateway_host_key(&self) -> anyhow::Result<String> {
        let secret = Api::<Secret>::namespaced(self.client.clone(), self.ns())
            .get(&format!("{}-gateway-host-key", self.install.fullname()))
            .await?;
        Ok(secret_text(&secret, "ssh_host_ed25519_key.pub")
            .trim()
            .to_owned())
    }

    /// Creates session `name` owned by `user` with SSH enabled by annotation, as the chart's
    /// default policy `annotated` expects, waits for the SSHAccess the operator makes for it,
    /// and adds `public_key` to that SSHAccess's `spec.authorizedKeys`.
    async fn create_ssh_session(
        &self,
        name: &str,
        user: &str,
        public_key: &str,
    ) -> anyhow::Result<()> {
        let namespace = self.sessions_ns();
        create_session(&self.client, namespace, name, user, true).await?;
        let accesses = Api::<SshAccess>::namespaced(self.client.clone(), namespace);
        let access = wait_for(&accesses, name, STARTUP, |_| true)
            .await
            .context("waiting for the operator to create the session's SSHAccess")?;
        assert_eq!(
            access.labels().get("app.kubernetes.io/managed-by"),
            Some(&"renku-ssh-operator".to_owned()),
            "SSHAccess {name} was not made by the operator: {:?}",
            access.labels()
        );
        // The key goes in under the test's own field manager. The operator's applies do not
        // contain authorizedKeys, so they leave it in place.
        let keys = json!({
            "apiVersion": "ssh.renku.io/v1alpha1",
            "kind": "SSHAccess",
            "metadata": { "name": name },
            "spec": { "authorizedKeys": [public_key] },
        });
        accesses
            .patch(
                name,
                &PatchParams::apply(TEST_FIELD_MANAGER),
                &Patch::Apply(&keys),
            )
            .await
            .with_context(|| format!("adding a key to SSHAccess {name}"))?;
        Ok(())
    }

    async fn uninstall(self) -> anyhow::Result<()> {
        self.install.uninstall().await?;
        self.sessions.delete_and_wait().await?;
        self.namespace.delete_and_wait().await
    }
}

/// Returns the port of the gateway's SSH address.
fn gateway_port(gateway: &Component) -> anyhow::Result<u16> {
    gateway
        .listen_address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .context("gateway address without port")
}

/// Runs `command` as session `session` through the gateway with the real `ssh` client, with the
/// key `key`, trusting only the gateway host key line `gateway_host_key`.
async fn ssh_through_gateway(
    gateway: &Component,
    gateway_host_key: &str,
    key: &Path,
    session: &str,
    command: &str,
) -> anyhow::Result<Output> {
    let port = gateway_port(gateway)?;
    let folder = key.parent().context("key path without folder")?;
    let known_hosts = folder.join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{port} {gateway_host_key}\n"),
    )?;
    let config = write_ssh_config(key, port, &known_hosts);
    let output = tokio::process::Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-l", session, "gateway", command])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running ssh")?;
    Ok(output)
}

fn ready_condition(access: &SshAccess) -> Option<String> {
    access.status.as_ref().and_then(|status| {
        status
            .conditions
            .iter()
            .find(|condition| condition.type_ == "Ready")
            .map(|condition| format!("{}: {}", condition.status, condition.message))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binaries_start_with_chart_settings() -> anyhow::Result<()> {
    require_tool("ssh");
    require_tool("ssh-keyscan");
    let keycloak = device_support::keycloak::keycloak().await;
    let alice_id = device_support::keycloak::admin::Admin::login(&keycloak)
        .await
        .user_id(&keycloak.alice.username)
        .await;
    let release = Release::install("helm-run", &keycloak.issuer).await?;
    let client = release.client.clone();
    let ns = release.ns();
    let fullname = release.install.fullname();

    let mut operator = release.start_operator().await?;
    let lease_name = format!("{fullname}-operator");
    let leases: Api<Lease> = release.namespace.api();
    wait_until(&mut operator.process, "the leader Lease", || async {
        let lease = leases.get_opt(&lease_name).await?;
        Ok(lease
            .and_then(|lease| lease.spec)
            .and_then(|spec| spec.holder_identity)
            .as_deref()
            == Some("operator-0"))
    })
    .await?;
    let ca_name = format!("{fullname}-gateway-ca");
    wait_until(&mut operator.process, "the CA Secret", || {
        secret_exists(&client, ns, &ca_name)
    })
    .await?;
    let tls_name = format!("{fullname}-webhook-tls");
    wait_until(
        &mut operator.process,
        "the webhook certificate Secret",
        || secret_exists(&client, ns, &tls_name),
    )
    .await?;
    let configurations = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let configuration_name = format!("{fullname}-webhook");
    wait_until(
        &mut operator.process,
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
    let operator_admin = operator.admin_address.clone();
    wait_until(&mut operator.process, "operator /readyz", || async {
        Ok(http_status(&operator_admin, "/readyz").await == Some(200))
    })
    .await?;

    let mut gateway = release.start_gateway().await?;
    let gateway_admin = gateway.admin_address.clone();
    wait_until(&mut gateway.process, "gateway /readyz", || async {
        Ok(http_status(&gateway_admin, "/readyz").await == Some(200))
    })
    .await?;

    // The gateway presents the host key the chart generated.
    let host_key = release.gateway_host_key().await?;
    let expected_key = host_key
        .split_whitespace()
        .nth(1)
        .context("public key line without key")?;
    let (host, port) = gateway
        .listen_address
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

    // A session with SSH enabled: the operator makes its SSHAccess and children, and the
    // user logs in through the gateway to renku-sshd in the session's pod.
    let folder = tempfile::Builder::new().prefix("rssh-helm-").tempdir()?;
    let key = generate_key(folder.path(), "user");
    let session = "login-s1";
    let sessions = release.sessions_ns();
    release
        .create_ssh_session(session, &alice_id, &public_key(&key))
        .await?;
    let sandbox = start_session_pod(&client, sessions, session, 71).await?;
    let access = wait_access_ready(&client, sessions, session).await;
    operator.process.check_running()?;
    let access =
        access.with_context(|| format!("operator output:\n{}", operator.process.output()))?;
    let accepted = access
        .status
        .as_ref()
        .map(|status| status.accepted_keys.len())
        .unwrap_or_default();
    assert_eq!(accepted, 1, "status: {:?}", access.status);
    let service_name = format!("{session}-ssh");
    let services = Api::<Service>::namespaced(client.clone(), sessions);
    assert!(
        services.get_opt(&service_name).await?.is_some(),
        "the operator made no Service {service_name}"
    );
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), sessions);
    assert!(
        policies.get_opt(&service_name).await?.is_some(),
        "the operator made no NetworkPolicy {service_name}"
    );

    let result = ssh_through_gateway(
        &gateway,
        &host_key,
        &key,
        session,
        "echo hello-$((6*7)); echo to-stderr >&2; exit 3",
    )
    .await?;
    let context = || {
        format!(
            "{}\ngateway output:\n{}\nrenku-sshd log:\n{}",
            describe(&result),
            gateway.process.output(),
            sandbox.log("renku-sshd")
        )
    };
    assert_eq!(result.status.code(), Some(3), "{}", context());
    assert_eq!(
        String::from_utf8_lossy(&result.stdout),
        "hello-42\n",
        "{}",
        context()
    );
    assert!(
        String::from_utf8_lossy(&result.stderr).contains("to-stderr"),
        "{}",
        context()
    );
    // Login without a key: Alice approves the device flow, and the gateway records the
    // approval of the offered key as a ConfigMap with the chart's permissions.
    let borrowed = generate_key(folder.path(), "borrowed");
    let config = write_ssh_config(
        &borrowed,
        gateway_port(&gateway)?,
        &folder.path().join("known_hosts"),
    );
    let login = device_support::Login::start(
        &folder.path().join("device-login"),
        &config,
        &format!("{session}@gateway"),
        "echo device-login",
    );
    let (_, url, code) = login.prompt().await?;
    device_support::approve_device_login(&url, &code, &keycloak.alice, Consent::Accept).await;
    let output = login.finish().await?;
    assert!(
        output.status.success(),
        "{}
gateway output:
{}",
        describe(&output),
        gateway.process.output()
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("device-login"));
    let approvals = Api::<ConfigMap>::namespaced(client.clone(), sessions)
        .list(&ListParams::default().labels(gateway::device::APPROVAL_SELECTOR))
        .await?;
    assert_eq!(approvals.items.len(), 1, "{:?}", approvals.items);

    // No request of either binary was denied on the way, Events included.
    for component in [&operator, &gateway] {
        let output = component.process.output();
        let denied: Vec<&str> = output
            .lines()
            .filter(|line| line.contains("forbidden"))
            .collect();
        assert!(
            denied.is_empty(),
            "the API server denied requests of the {}:\n{}",
            component.process.name,
            denied.join("\n")
        );
    }
    operator.process.check_running()?;
    gateway.process.check_running()?;

    drop(sandbox);
    drop(gateway);
    drop(operator);
    release.uninstall().await
}

/// The failure that a missing rule causes.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// The session's SSHAccess never becomes Ready, and the gateway rejects the login.
    LoginRejected,
    /// The gateway's caches never sync, so `/readyz` stays unready.
    GatewayNotReady,
}

/// A rule removed from the Role that the chart gives a component in the sessions namespace.
struct MissingRule {
    /// `operator` or `gateway`.
    component: &'static str,
    /// The resource of the removed rule, as RBAC names it.
    resource: &'static str,
    failure: Failure,
    /// Whether the operator still writes the session's Secrets, so that the session's pod can
    /// run and the login fails for the missing rule alone.
    session_pod: bool,
}

const MISSING_RULES: [MissingRule; 4] = [
    MissingRule {
        component: "operator",
        resource: "sshaccesses/status",
        failure: Failure::LoginRejected,
        session_pod: true,
    },
    MissingRule {
        component: "operator",
        resource: "networkpolicies",
        failure: Failure::LoginRejected,
        // The operator applies the Secrets, the Service and the NetworkPolicy concurrently and
        // stops at the first error, so the Secrets may be missing.
        session_pod: false,
    },
    MissingRule {
        component: "gateway",
        resource: "pods",
        failure: Failure::GatewayNotReady,
        session_pod: false,
    },
    MissingRule {
        component: "gateway",
        resource: "configmaps",
        failure: Failure::GatewayNotReady,
        session_pod: false,
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_rbac_rules_break_login() -> anyhow::Result<()> {
    require_tool("ssh");
    for (index, missing) in MISSING_RULES.iter().enumerate() {
        let case = format!("{} without {}", missing.component, missing.resource);
        println!("case: {case}");
        let subnet = 72 + u8::try_from(index)?;
        check_missing_rule(missing, subnet)
            .await
            .with_context(|| format!("case {case}"))?;
    }
    Ok(())
}

/// Installs the chart, removes `missing` from it, starts both binaries and checks that
/// `missing.failure` happens and that the component's output names the forbidden resource.
async fn check_missing_rule(missing: &MissingRule, subnet: u8) -> anyhow::Result<()> {
    // The gateway contacts the issuer only when a device login starts, and these cases start
    // none. The address only turns the device flow and its RBAC rule on.
    let release = Release::install("helm-rbac", "http://127.0.0.1:9/realms/unused").await?;
    release
        .remove_rule(missing.component, missing.resource)
        .await?;
    let mut operator = release.start_operator().await?;
    let mut gateway = release.start_gateway().await?;
    let resource = missing.resource;
    // The API server's message, `... cannot <verb> resource "<resource>" ...`, is part of the
    // logged error.
    match missing.failure {
        Failure::GatewayNotReady => {
            let needles = ["watch failed", "forbidden", resource];
            let line = wait_for_line(&mut gateway.process, &needles).await?;
            let status = http_status(&gateway.admin_address, "/readyz").await;
            assert_ne!(
                status,
                Some(200),
                "the gateway is ready without {resource}; it logged:\n{line}"
            );
        }
        Failure::LoginRejected => {
            let gateway_admin = gateway.admin_address.clone();
            wait_until(&mut gateway.process, "gateway /readyz", || async {
                Ok(http_status(&gateway_admin, "/readyz").await == Some(200))
            })
            .await?;
            let folder = tempfile::Builder::new().prefix("rssh-helm-").tempdir()?;
            let key = generate_key(folder.path(), "user");
            let session = "rbac-s1";
            release
                .create_ssh_session(session, "bob-sub", &public_key(&key))
                .await?;
            let needles = ["SSHAccess reconcile failed", "forbidden", resource];
            let line = wait_for_line(&mut operator.process, &needles).await?;
            let accesses =
                Api::<SshAccess>::namespaced(release.client.clone(), release.sessions_ns());
            let access = accesses.get(session).await?;
            let ready = ready_condition(&access);
            assert!(
                !ready
                    .as_deref()
                    .is_some_and(|ready| ready.starts_with("True")),
                "SSHAccess is Ready without {resource}: {ready:?}; the operator logged:\n{line}"
            );

            let host_key = release.gateway_host_key().await?;
            let sandbox = if missing.session_pod {
                let sessions = release.sessions_ns();
                Some(start_session_pod(&release.client, sessions, session, subnet).await?)
            } else {
                None
            };
            let result =
                ssh_through_gateway(&gateway, &host_key, &key, session, "echo logged-in").await?;
            assert_eq!(result.status.code(), Some(255), "{}", describe(&result));
            assert!(
                String::from_utf8_lossy(&result.stderr).contains("Permission denied"),
                "{}",
                describe(&result)
            );
            assert!(
                !String::from_utf8_lossy(&result.stdout).contains("logged-in"),
                "{}",
                describe(&result)
            );
            drop(sandbox);
        }
    }
    operator.process.check_running()?;
    gateway.process.check_running()?;
    drop(gateway);
    drop(operator);
    release.uninstall().await
}
