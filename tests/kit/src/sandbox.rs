//! A "pod" without a kubelet: a Linux network namespace with a veth pair and private addresses,
//! the real `renku-sshd` running inside it, and Secret volumes laid out as kubelet lays them
//! out (`..data` symlink swapped atomically).
//!
//! Creating a sandbox needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip` from iproute2.
//! The addresses exist only inside the namespace and on the host end of its veth pair, so
//! traffic to them never leaves the machine.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

/// Prefix of every network namespace a sandbox creates.
pub const NETNS_PREFIX: &str = "rssh-";
/// Port renku-sshd listens on inside the sandbox.
pub const SIDECAR_PORT: u16 = 2222;
/// Interval at which a synced Secret volume polls its Secret, standing in for kubelet's sync.
const SECRET_SYNC_INTERVAL: Duration = Duration::from_millis(300);

/// A network namespace with its own address, and the processes started in it.
///
/// Dropping it kills the processes (also those they started inside the namespace) and deletes
/// the namespace, which also removes the veth pair.
pub struct PodSandbox {
    netns: String,
    host_ip: Ipv4Addr,
    pod_ip: Ipv4Addr,
    root: tempfile::TempDir,
    processes: Vec<Child>,
    sync_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PodSandbox {
    /// Creates namespace `rssh-<subnet>-<pid>` with the /30 network `10.213.<subnet>.0`: the
    /// host end of the veth pair gets `.1`, the pod end `.2`. Each concurrently running sandbox
    /// needs its own `subnet`.
    pub fn create(subnet: u8) -> anyhow::Result<Self> {
        remove_stale_namespaces();
        let pid = std::process::id();
        let netns = format!("{NETNS_PREFIX}{subnet}-{pid}");
        let host_if = format!("rssh{subnet}h");
        let pod_if = format!("rssh{subnet}p");
        let host_ip = Ipv4Addr::new(10, 213, subnet, 1);
        let pod_ip = Ipv4Addr::new(10, 213, subnet, 2);
        let root = tempfile::Builder::new().prefix("rssh-pod-").tempdir()?;
        let sandbox = Self {
            netns: netns.clone(),
            host_ip,
            pod_ip,
            root,
            processes: Vec::new(),
            sync_tasks: Vec::new(),
        };
        ip(&["netns", "add", &netns])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if,
        ])?;
        ip(&["link", "set", &pod_if, "netns", &netns])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{pod_ip}/30"),
            "dev",
            &pod_if,
        ])?;
        ip(&["-n", &netns, "link", "set", &pod_if, "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        Ok(sandbox)
    }

    /// Returns the pod's IP address, for `status.podIP`.
    pub fn pod_ip(&self) -> Ipv4Addr {
        self.pod_ip
    }

    /// Returns the host's address on the veth pair: the source address of the gateway's
    /// connections as the pod receives them.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// Returns the namespace name.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Returns a directory private to this sandbox, removed on drop.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// Writes a Secret volume at `<dir>/<volume>` with one file per entry, in kubelet's layout,
    /// or updates it with an atomic `..data` swap when it exists. Returns the volume directory.
    pub fn write_volume(
        &self,
        volume: &str,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> anyhow::Result<PathBuf> {
        let directory = self.root.path().join(volume);
        write_secret_volume(&directory, files)?;
        Ok(directory)
    }

    /// Copies Secret `namespace/name` into volume `volume` now, then keeps it in sync in the
    /// background as kubelet would, until the sandbox is dropped. Returns the volume directory.
    pub async fn mount_secret(
        &mut self,
        client: &Client,
        namespace: &str,
        name: &str,
        volume: &str,
    ) -> anyhow::Result<PathBuf> {
        let api = Api::<Secret>::namespaced(client.clone(), namespace);
        let secret = api
            .get(name)
            .await
            .with_context(|| format!("reading Secret {namespace}/{name}"))?;
        let mut current = secret_files(&secret);
        let directory = self.root.path().join(volume);
        write_secret_volume(&directory, &current)?;
        let sync_directory = directory.clone();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(SECRET_SYNC_INTERVAL).await;
                let Ok(Some(secret)) = api.get_opt(&name).await else {
                    continue;
                };
                let files = secret_files(&secret);
                if files != current {
                    if let Err(error) = write_secret_volume(&sync_directory, &files) {
                        eprintln!(
                            "sandbox: cannot update {}: {error:#}",
                            sync_directory.display()
                        );
                        continue;
                    }
                    current = files;
                }
            }
        });
        self.sync_tasks.push(task);
        Ok(directory)
    }

    /// Starts a process inside the namespace (`ip netns exec`). Its output goes to
    /// `<dir>/<name>.log`. The process is killed when the sandbox is dropped.
    pub fn spawn(&mut self, name: &str, program: &Path, args: &[String]) -> anyhow::Result<u32> {
        let log_path = self.root.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} in {}", program.display(), self.netns))?;
        let pid = child.id();
        self.processes.push(child);
        Ok(pid)
    }

    /// Returns the log of a process started with [`PodSandbox::spawn`].
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts `renku-sshd` on port 2222 inside the namespace with the given host key,
    /// `authorized_keys`, trusted CA file and principal, and waits until it accepts
    /// connections on the pod address.
    pub async fn start_sshd(
        &mut self,
        host_key: &Path,
        authorized_keys: &Path,
        trusted_user_ca_keys: &Path,
        principal: &str,
    ) -> anyhow::Result<()> {
        let binary = sshd_binary()?;
        let args = [
            "--listen".to_owned(),
            format!("0.0.0.0:{SIDECAR_PORT}"),
            "--host-key".to_owned(),
            host_key.display().to_string(),
            "--authorized-keys".to_owned(),
            authorized_keys.display().to_string(),
            "--trusted-user-ca-keys".to_owned(),
            trusted_user_ca_keys.display().to_string(),
            "--principal".to_owned(),
            principal.to_owned(),
            "--log-level".to_owned(),
            "debug".to_owned(),
        ];
        self.spawn("renku-sshd", &binary, &args)?;
        let address = (self.pod_ip, SIDECAR_PORT);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "renku-sshd did not listen on {}:{SIDECAR_PORT}; log:\n{}",
                    self.pod_ip,
                    self.log("renku-sshd")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PodSandbox {
    fn drop(&mut self) {
        for task in &self.sync_tasks {
            task.abort();
        }
        for child in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Processes started inside the session (a login's `setsid` daemon, say) are not our
        // children. They would keep the namespace and its veth alive, so they are killed too.
        if let Ok(output) = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .output()
        {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        // Deleting the namespace destroys the pod end of the veth pair, and with it the host end.
        if let Err(error) = ip(&["netns", "delete", &self.netns]) {
            eprintln!(
                "sandbox: cannot delete network namespace {}: {error:#}",
                self.netns
            );
        }
    }
}

/// Returns a Secret's data as files.
fn secret_files(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .as_ref()
        .map(|data| {
            data.iter()
                .map(|(key, value)| (key.clone(), value.0.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `files` into `directory` in kubelet's Secret volume layout: the files in a
/// timestamped directory, `..data` pointing at it, and `<file> -> ..data/<file>` links. An
/// existing volume is updated by writing a new timestamped directory and renaming a new
/// `..data` link over the old one, which is atomic.
pub fn write_secret_volume(
    directory: &Path,
    files: &BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(directory)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let generation = format!("..{stamp}");
    let generation_dir = directory.join(&generation);
    std::fs::create_dir(&generation_dir)?;
    for (name, content) in files {
        std::fs::write(generation_dir.join(name), content)?;
        // Secret volumes are mounted with mode 0644 by default; private keys get 0600 so that
        // OpenSSH tools accept them.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            generation_dir.join(name),
            std::fs::Permissions::from_mode(0o600),
        )?;
    }
    let previous = std::fs::read_link(directory.join("..data")).ok();
    let temporary = directory.join("..data_tmp");
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(&generation, &temporary)?;
    std::fs::rename(&temporary, directory.join("..data"))?;
    for name in files.keys() {
        let link = directory.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link)?;
        }
    }
    if let Some(previous) = previous {
        let _ = std::fs::remove_dir_all(directory.join(previous));
    }
    Ok(())
}

/// Returns the path of the `renku-sshd` binary: `$RENKU_SSHD_BIN`, else the one `cargo build
/// -p renku-sshd` produces (built once per test process).
pub fn sshd_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| build_sshd().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(|error| anyhow::anyhow!(error))
}

fn build_sshd() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("RENKU_SSHD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let output = crate::cargo_command()
        .args([
            "build",
            "-p",
            "renku-sshd",
            "--bin",
            "renku-sshd",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build -p renku-sshd")?;
    if !output.status.success() {
        bail!(
            "cargo build -p renku-sshd failed; set RENKU_SSHD_BIN to a built binary to skip the build"
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "renku-sshd"
            && let Some(executable) = message["executable"].as_str()
        {
            return Ok(PathBuf::from(executable));
        }
    }
    bail!("cargo build -p renku-sshd reported no renku-sshd executable")
}

/// Deletes `rssh-*` namespaces whose creating process no longer runs (left by a killed test).
fn remove_stale_namespaces() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest
            .rsplit('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", name]);
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip`: install iproute2 (scripts/install-deps.sh does)")?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed: {}; sandboxes need root and iproute2",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
