//! Load generator behind `bench/gateway/run.sh`; see that script and
//! docs/benchmarks-gateway.md.
//!
//! It sets up one session like the end-to-end tests do: the operator in-process, the pod as a
//! network namespace running the release `renku-sshd`. It starts the release gateway binary and
//! an OpenSSH server on loopback ports. Then it measures bulk transfer (gateway, sidecar,
//! OpenSSH to OpenSSH), login time (gateway, sidecar, OpenSSH), the gateway's memory per idle
//! connection and logins per second at saturation. Every loop is bounded in count and time, and all traffic stays on loopback and
//! in the benchmark's own network namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use api::{AmaltheaSession, SshAccess};
use clap::Parser;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use serde_json::json;
use testkit::{PodSandbox, TestNamespace, wait_for};

/// Flags of the load generator.
#[derive(Debug, Parser)]
struct Args {
    /// Gateway binary to measure.
    #[arg(long)]
    gateway_bin: PathBuf,
    /// OpenSSH server binary for the baseline.
    #[arg(long, default_value = "/usr/sbin/sshd")]
    openssh_sshd: PathBuf,
    /// Bytes per bulk transfer, in MiB.
    #[arg(long, default_value_t = 512)]
    transfer_mib: u64,
    /// Bulk transfers per target; the median is reported.
    #[arg(long, default_value_t = 3)]
    transfer_runs: usize,
    /// Logins per target for the login time.
    #[arg(long, default_value_t = 30)]
    logins: usize,
    /// Idle connections held open for the memory figure.
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
    /// Duration of each saturation run, in seconds.
    #[arg(long, default_value_t = 15)]
    saturation_seconds: u64,
    /// Concurrent clients in the saturation runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// File for the figures as JSON.
    #[arg(long)]
    output: Option<PathBuf>,
}

const SESSION: &str = "bench-s1";
const SUBNET: u8 = 201;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::Builder::new()
        .prefix("rssh-gw-bench-")
        .tempdir()?;
    let client = testkit::connect().await?;
    testkit::install_project_crds(&client).await?;
    let namespace = TestNamespace::create(&client, "gw-bench").await?;
    let ns = namespace.name().to_owned();
    let ca_secret = format!("{ns}/renku-ssh-gateway-ca");
    let _operator = start_operator(&client, &ns, &ca_secret).await?;

    let key_path = keygen(dir.path(), "user")?;
    let user_key = std::fs::read_to_string(format!("{}.pub", key_path.display()))?;
    let (sandbox, known_hosts_line) = start_session(&client, &ns, &user_key).await?;
    let sidecar = format!("{}", sandbox.pod_ip());

    let gateway_key = keygen(dir.path(), "gateway_host")?;
    let gateway_port = free_port()?;
    let admin_port = free_port()?;
    let mut gateway = GuardedChild(
        Command::new(&args.gateway_bin)
            .args(["--listen", &format!("127.0.0.1:{gateway_port}")])
            .arg("--host-key")
            .arg(&gateway_key)
            .args(["--ca-secret", &ca_secret, "--watch-namespace", &ns])
            .args(["--admin-address", &format!("127.0.0.1:{admin_port}")])
            .args([
                "--max-connections-per-user",
                "100000",
                "--log-format",
                "json",
            ])
            .env("KUBECONFIG", testkit::kubeconfig_path())
            .env("RUST_LOG", "warn")
            .stderr(std::fs::File::create(dir.path().join("gateway.log"))?)
            .spawn()
            .context("starting the gateway binary")?,
    );
    wait_ready(admin_port).await?;
    let openssh_port = free_port()?;
    let _openssh = start_openssh(&args.openssh_sshd, dir.path(), openssh_port, &user_key)?;

    let known_hosts = dir.path().join("known_hosts");
    let sidecar_key = known_hosts_line
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ");
    let openssh_key = std::fs::read_to_string(dir.path().join("openssh_host.pub"))?;
    std::fs::write(
        &known_hosts,
        format!(
            "[127.0.0.1]:{gateway_port} {}\n[{sidecar}]:2222 {sidecar_key}\n[127.0.0.1]:{openssh_port} {}\n",
            std::fs::read_to_string(format!("{}.pub", gateway_key.display()))?.trim(),
            openssh_key.trim(),
        ),
    )?;
    let targets = [
        Target {
            label: "gateway",
            host: "127.0.0.1".into(),
            port: gateway_port,
            user: SESSION.into(),
        },
        Target {
            label: "sidecar",
            host: sidecar.clone(),
            port: 2222,
            user: SESSION.into(),
        },
        Target {
            label: "openssh",
            host: "127.0.0.1".into(),
            port: openssh_port,
            user: "root".into(),
        },
    ];
    let ssh = SshClient {
        key: key_path.clone(),
        known_hosts,
    };

    let mut report = serde_json::Map::new();
    println!(
        "== bulk transfer, {} MiB, median of {} runs",
        args.transfer_mib, args.transfer_runs
    );
    for direction in ["download", "upload"] {
        let mut rates = serde_json::Map::new();
        for target in &targets {
            let rate = transfer(
                &ssh,
                target,
                direction,
                args.transfer_mib,
                args.transfer_runs,
            )?;
            println!("{direction:>8} {:>8}: {rate:8.1} MiB/s", target.label);
            rates.insert(target.label.to_owned(), json!(rate));
        }
        report.insert(
            format!("transfer_{direction}_mib_per_s"),
            serde_json::Value::Object(rates),
        );
    }

    println!("== login time (`ssh host true`), {} logins", args.logins);
    let mut login_times = serde_json::Map::new();
    for target in &targets {
        let (median, p90) = login_times_of(&ssh, target, args.logins)?;
        println!(
            "{:>8}: median {median:6.1} ms, p90 {p90:6.1} ms",
            target.label
        );
        login_times.insert(
            target.label.to_owned(),
            json!({ "median_ms": median, "p90_ms": p90 }),
        );
    }
    report.insert("login_ms".into(), serde_json::Value::Object(login_times));

    let private_key = Arc::new(russh::keys::load_secret_key(&key_path, None)?);
    let gateway_host_key = russh::keys::load_public_key(format!("{}.pub", gateway_key.display()))?;
    let address = format!("127.0.0.1:{gateway_port}");
    let gateway_pid = gateway.0.id();

    println!("== memory with {} idle connections", args.idle_connections);
    for with_shell in [false, true] {
        let before = rss_kib(gateway_pid)?;
        let (held, channels) = open_idle(
            &address,
            &private_key,
            &gateway_host_key,
            args.idle_connections,
            with_shell,
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = rss_kib(gateway_pid)?;
        let per_connection = (during.saturating_sub(before)) as f64 / held.len() as f64;
        let label = if with_shell {
            "with_exec_channel"
        } else {
            "authenticated_only"
        };
        println!(
            "{label:>20}: {} connections, gateway RSS {before} KiB -> {during} KiB, {per_connection:.1} KiB per connection",
            held.len()
        );
        report.insert(
            format!("idle_{label}"),
            json!({ "connections": held.len(), "rss_before_kib": before, "rss_during_kib": during, "kib_per_connection": per_connection }),
        );
        for handle in &held {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "", "")
                .await;
        }
        drop(channels);
        drop(held);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    println!(
        "== logins per second at saturation, {} clients, {} s",
        args.concurrency, args.saturation_seconds
    );
    for with_exec in [false, true] {
        let rate = saturate(
            &address,
            &private_key,
            &gateway_host_key,
            args.concurrency,
            args.saturation_seconds,
            with_exec,
        )
        .await;
        let label = if with_exec {
            "login_exec_per_s"
        } else {
            "login_per_s"
        };
        println!("{label:>20}: {rate:.1}");
        report.insert(label.into(), json!(rate));
    }

    let text = serde_json::to_string_pretty(&serde_json::Value::Object(report))?;
    if let Some(path) = &args.output {
        std::fs::write(path, &text)?;
    }
    drop(sandbox);
    namespace.delete_and_wait().await?;
    let _ = gateway.0.kill();
    Ok(())
}

/// A child process killed on drop.
struct GuardedChild(Child);

impl Drop for GuardedChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Target {
    label: &'static str,
    host: String,
    port: u16,
    user: String,
}

struct SshClient {
    key: PathBuf,
    known_hosts: PathBuf,
}

impl SshClient {
    fn command(&self, target: &Target) -> Command {
        let mut command = Command::new("ssh");
        command
            .args([
                "-F",
                "/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-i")
            .arg(&self.key)
            .args([
                "-p",
                &target.port.to_string(),
                "-l",
                &target.user,
                &target.host,
            ]);
        command
    }
}

fn transfer(
    ssh: &SshClient,
    target: &Target,
    direction: &str,
    mib: u64,
    runs: usize,
) -> anyhow::Result<f64> {
    let bytes = mib << 20;
    let mut rates = Vec::new();
    for _ in 0..runs {
        let mut command = ssh.command(target);
        let started = Instant::now();
        let status = if direction == "download" {
            command
                .arg(format!("head -c {bytes} /dev/zero"))
                .stdout(Stdio::null())
                .status()?
        } else {
            let mut child = command
                .arg("cat > /dev/null")
                .stdin(Stdio::piped())
                .spawn()?;
            let mut stdin = child.stdin.take().context("stdin")?;
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..mib {
                std::io::Write::write_all(&mut stdin, &chunk)?;
            }
            drop(stdin);
            child.wait()?
        };
        let seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!("{direction} via {} failed: {status}", target.label);
        }
        rates.push(mib as f64 / seconds);
    }
    Ok(median(&mut rates))
}

fn login_times_of(ssh: &SshClient, target: &Target, logins: usize) -> anyhow::Result<(f64, f64)> {
    let mut times = Vec::new();
    for _ in 0..logins {
        let started = Instant::now();
        let status = ssh
            .command(target)
            .arg("true")
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("login via {} failed: {status}", target.label);
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let median = median(&mut times);
    let p90 = times[(times.len() * 9 / 10).min(times.len() - 1)];
    Ok((median, p90))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A client handler that accepts only the expected host key.
struct BenchClient {
    host_key: PublicKey,
}

impl client::Handler for BenchClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(
            matches!(key, PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.host_key.key_data()),
        )
    }
}

async fn login(
    address: &str,
    key: &Arc<PrivateKey>,
    host_key: &PublicKey,
) -> anyhow::Result<client::Handle<BenchClient>> {
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        ..client::Config::default()
    });
    let handler = BenchClient {
        host_key: host_key.clone(),
    };
    let mut handle = client::connect(config, address, handler).await?;
    let key = PrivateKeyWithHashAlg::new(Arc::clone(key), None);
    let result = handle.authenticate_publickey(SESSION, key).await?;
    if !result.success() {
        bail!("login rejected");
    }
    Ok(handle)
}

async fn open_idle(
    address: &str,
    key: &Arc<PrivateKey>,
    host_key: &PublicKey,
    count: usize,
    with_shell: bool,
) -> anyhow::Result<(
    Vec<client::Handle<BenchClient>>,
    Vec<russh::Channel<client::Msg>>,
)> {
    let mut held = Vec::with_capacity(count);
    let mut channels = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    for batch in (0..count).collect::<Vec<_>>().chunks(50) {
        let logins = batch.iter().map(|_| async {
            let handle = login(address, key, host_key).await?;
            let channel = if with_shell {
                let channel = handle.channel_open_session().await?;
                channel.exec(true, "sleep 3600").await?;
                Some(channel)
            } else {
                None
            };
            anyhow::Ok((handle, channel))
        });
        for result in futures::future::join_all(logins).await {
            let (handle, channel) = result?;
            held.push(handle);
            channels.extend(channel);
        }
        if Instant::now() > deadline {
            bail!("opening {count} connections took longer than 5 minutes");
        }
    }
    Ok((held, channels))
}

async fn saturate(
    address: &str,
    key: &Arc<PrivateKey>,
    host_key: &PublicKey,
    concurrency: usize,
    seconds: u64,
    with_exec: bool,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers = (0..concurrency).map(|_| {
        let done = Arc::clone(&done);
        let failed = Arc::clone(&failed);
        async move {
            while Instant::now() < deadline {
                let attempt = async {
                    let handle = login(address, key, host_key).await?;
                    if with_exec {
                        let mut channel = handle.channel_open_session().await?;
                        channel.exec(true, "true").await?;
                        while let Some(message) = channel.wait().await {
                            if matches!(message, russh::ChannelMsg::ExitStatus { .. }) {
                                break;
                            }
                        }
                    }
                    handle
                        .disconnect(russh::Disconnect::ByApplication, "", "")
                        .await?;
                    anyhow::Ok(())
                };
                match attempt.await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    });
    let started = Instant::now();
    futures::future::join_all(workers).await;
    let failures = failed.load(Ordering::Relaxed);
    if failures > 0 {
        println!("  ({failures} attempts failed)");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .context("VmRSS missing")
}

fn keygen(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()?;
    if !status.success() {
        bail!("ssh-keygen failed");
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_ready(admin_port: u16) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await {
            let _ = stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await;
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response).await;
            if response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the gateway did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn start_openssh(
    binary: &Path,
    dir: &Path,
    port: u16,
    user_key: &str,
) -> anyhow::Result<GuardedChild> {
    let host_key = dir.join("openssh_host");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key)
        .status()?;
    if !status.success() {
        bail!("ssh-keygen failed");
    }
    std::fs::write(dir.join("openssh_authorized_keys"), user_key)?;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {host}\nAuthorizedKeysFile {keys}\nStrictModes no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPidFile {pid}\n\
             PermitRootLogin prohibit-password\nMaxStartups 1000\nLogLevel ERROR\n",
            host = host_key.display(),
            keys = dir.join("openssh_authorized_keys").display(),
            pid = dir.join("sshd.pid").display(),
        ),
    )?;
    // OpenSSH's privilege separation needs its empty directory.
    std::fs::create_dir_all("/run/sshd")?;
    let child = Command::new(binary)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("OpenSSH sshd did not listen on port {port}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(GuardedChild(child))
}

struct StopOnDrop(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

async fn start_operator(client: &Client, ns: &str, ca_secret: &str) -> anyhow::Result<StopOnDrop> {
    let args = [
        "renku-ssh-operator",
        "--namespace",
        ns,
        "--ssh-policy",
        "explicit",
        "--gateway-host",
        "127.0.0.1",
        "--ca-secret",
        ca_secret,
        "--admin-address",
        "127.0.0.1:0",
        "--lease-namespace",
        ns,
    ];
    let config = operator::Args::try_parse_from(args)?.into_config()?;
    let running = operator::Operator::new(config, client.clone()).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(running.run(async move {
        let _ = stopped.await;
    }));
    Ok(StopOnDrop(Some(stop)))
}

/// Creates the session, its SSHAccess and its sandboxed pod; returns the sandbox and the
/// sidecar's known_hosts line.
async fn start_session(
    client: &Client,
    ns: &str,
    user_key: &str,
) -> anyhow::Result<(PodSandbox, String)> {
    let user = "bench-user";
    let keys_secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "bench-user-keys" },
        "stringData": { "authorized_keys": user_key },
    });
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            "bench-user-keys",
            &PatchParams::apply("renku-ssh-bench").force(),
            &Patch::Apply(&keys_secret),
        )
        .await?;
    let session: AmaltheaSession = serde_json::from_value(json!({
        "apiVersion": "amalthea.dev/v1alpha1", "kind": "AmaltheaSession",
        "metadata": { "name": SESSION, "labels": { "renku.io/safe-username": user } },
        "spec": { "hibernated": false, "session": { "image": "renku/renkulab-py:3.12" } },
    }))?;
    let session = Api::<AmaltheaSession>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &session)
        .await?;
    let labels = json!({ "app.kubernetes.io/name": "AmaltheaSession", "app.kubernetes.io/instance": SESSION });
    let stateful_set: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": { "name": SESSION, "labels": labels, "ownerReferences": [{
            "apiVersion": "amalthea.dev/v1alpha1", "kind": "AmaltheaSession", "name": SESSION,
            "uid": session.uid().context("session uid")?, "controller": true,
        }] },
        "spec": { "replicas": 1, "serviceName": SESSION, "selector": { "matchLabels": labels },
            "template": { "metadata": { "labels": labels }, "spec": { "containers": [
                { "name": "amalthea-session", "image": "renku/renkulab-py:3.12" },
                { "name": "renku-ssh", "image": "renku/renku-sshd:bench" },
            ] } } },
    }))?;
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &stateful_set)
        .await?;
    let access: SshAccess = serde_json::from_value(json!({
        "apiVersion": "ssh.renku.io/v1alpha1", "kind": "SSHAccess",
        "metadata": { "name": SESSION },
        "spec": { "sessionRef": { "name": SESSION }, "user": user,
            "keysFrom": [{ "secretRef": { "name": "bench-user-keys" } }] },
    }))?;
    Api::<SshAccess>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &access)
        .await?;

    let timeout = Duration::from_secs(60);
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    wait_for(&secrets, &format!("{SESSION}-ssh-keys"), timeout, |_| true).await?;
    wait_for(&secrets, &format!("{SESSION}-ssh-hostkey"), timeout, |_| {
        true
    })
    .await?;
    let mut sandbox = PodSandbox::create(SUBNET)?;
    let keys = sandbox
        .mount_secret(client, ns, &format!("{SESSION}-ssh-keys"), "keys")
        .await?;
    let host = sandbox
        .mount_secret(client, ns, &format!("{SESSION}-ssh-hostkey"), "hostkey")
        .await?;
    sandbox
        .start_sshd(
            &host.join("ssh_host_ed25519_key"),
            &keys.join("authorized_keys"),
            &keys.join("trusted_user_ca_keys"),
            SESSION,
        )
        .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    wait_for(&pods, &format!("{SESSION}-0"), timeout, |_| true).await?;
    testkit::mark_pod_running(
        &pods,
        &format!("{SESSION}-0"),
        &sandbox.pod_ip().to_string(),
    )
    .await?;
    let accesses = Api::<SshAccess>::namespaced(client.clone(), ns);
    let access = wait_for(&accesses, SESSION, timeout, |access| {
        access.status.as_ref().is_some_and(|status| {
            status
                .conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
        })
    })
    .await?;
    let line = access
        .status
        .and_then(|status| status.host_key)
        .map(|host_key| host_key.known_hosts_line)
        .context("no host key in status")?;
    Ok((sandbox, line))
}
