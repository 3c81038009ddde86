//! Test harness: the built `renku-sshd` binary on a free loopback port, key files laid out as
//! kubelet lays out a Secret volume, and the real OpenSSH client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// Time allowed for the server to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

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

/// Runs a command and returns its output, failing the test when it cannot start.
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
    let path = private_key.with_extension("pub");
    let path = if path.exists() {
        path
    } else {
        PathBuf::from(format!("{}.pub", private_key.display()))
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
        .trim()
        .to_owned()
}

/// Signs a user certificate for `key` with `ca_key`: `ssh-keygen -s`.
pub fn sign_certificate(
    ca_key: &Path,
    key: &Path,
    identity: &str,
    principals: &str,
    validity: &str,
) -> PathBuf {
    let public = PathBuf::from(format!("{}.pub", key.display()));
    let output = run(Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca_key)
        .args(["-I", identity, "-n", principals, "-V", validity, "-z", "42"])
        .arg(&public));
    assert!(output.status.success(), "ssh-keygen -s failed: {output:?}");
    PathBuf::from(format!("{}-cert.pub", key.display()))
}

/// A directory laid out like a Kubernetes Secret volume: `..<timestamp>/<file>`, a `..data`
/// symlink to it, and `<file> -> ..data/<file>`. Updates swap `..data` atomically.
pub struct SecretVolume {
    root: PathBuf,
    generation: u32,
}

impl SecretVolume {
    /// Creates the volume with one file.
    pub fn create(root: &Path, file: &str, content: &str) -> Self {
        std::fs::create_dir_all(root).expect("create secret dir");
        let mut volume = Self {
            root: root.to_path_buf(),
            generation: 0,
        };
        volume.update(file, content);
        std::os::unix::fs::symlink(format!("..data/{file}"), root.join(file))
            .expect("symlink file");
        volume
    }

    /// Path of the file as the server is given it.
    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    /// Writes a new generation and swaps `..data` to it with a rename, as kubelet does.
    pub fn update(&mut self, file: &str, content: &str) {
        self.generation += 1;
        let name = format!(
            "..2026_01_01_00_00_{:02}.{:09}",
            self.generation, self.generation
        );
        let generation_dir = self.root.join(&name);
        std::fs::create_dir(&generation_dir).expect("create generation dir");
        std::fs::write(generation_dir.join(file), content).expect("write secret file");
        let temporary = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&temporary);
        std::os::unix::fs::symlink(&name, &temporary).expect("symlink ..data_tmp");
        let previous = std::fs::read_link(self.root.join("..data")).ok();
        std::fs::rename(&temporary, self.root.join("..data")).expect("swap ..data");
        if let Some(previous) = previous {
            let _ = std::fs::remove_dir_all(self.root.join(previous));
        }
    }
}

/// Keys and files of one test.
pub struct Fixture {
    /// Temporary directory holding everything.
    pub dir: TempDir,
    /// Server host key.
    pub host_key: PathBuf,
    /// known_hosts with the host key (written once the port is known).
    pub known_hosts: PathBuf,
    /// A user key listed in authorized_keys.
    pub user_key: PathBuf,
    /// The authorized_keys Secret volume.
    pub keys: SecretVolume,
}

impl Fixture {
    /// Creates a host key, a user key and an authorized_keys volume listing the user key.
    pub fn new() -> Self {
        require_tool("ssh");
        let dir = tempfile::tempdir().expect("tempdir");
        let host_key = generate_key(dir.path(), "host_key");
        let user_key = generate_key(dir.path(), "user_key");
        let keys = SecretVolume::create(
            &dir.path().join("keys"),
            "authorized_keys",
            &format!("{}\n", public_key(&user_key)),
        );
        let known_hosts = dir.path().join("known_hosts");
        Self {
            dir,
            host_key,
            known_hosts,
            user_key,
            keys,
        }
    }

    /// Path inside the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A running `renku-sshd`.
pub struct Server {
    child: Child,
    /// Listening address.
    pub address: SocketAddr,
    /// Log lines (JSON) collected from stderr.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    known_hosts: PathBuf,
}

impl Server {
    /// Starts the server with the fixture's host key and authorized_keys plus `extra` flags.
    pub fn start(fixture: &Fixture, extra: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_renku-sshd"));
        command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--log-level",
                "debug",
            ])
            .arg("--host-key")
            .arg(&fixture.host_key)
            .arg("--authorized-keys")
            .arg(fixture.keys.path("authorized_keys"))
            .args(extra)
            .env("HOME", fixture.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start renku-sshd");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (address_sender, address_receiver) = mpsc::channel();
        let collected = std::sync::Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("\"listening\"")
                    && let Some(address) = json_field(&line, "address")
                {
                    let _ = address_sender.send(address);
                }
                collected.lock().expect("log lock").push(line);
            }
        });
        let address: SocketAddr = match address_receiver.recv_timeout(START_TIMEOUT) {
            Ok(address) => address.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "renku-sshd did not start listening: {:?}",
                    log.lock().expect("log")
                );
            }
        };
        let host_public = public_key(&fixture.host_key);
        let mut fields = host_public.split_whitespace();
        let known_hosts_line = format!(
            "[127.0.0.1]:{} {} {}\n",
            address.port(),
            fields.next().unwrap_or_default(),
            fields.next().unwrap_or_default()
        );
        std::fs::write(&fixture.known_hosts, known_hosts_line).expect("write known_hosts");
        Self {
            child,
            address,
            log,
            known_hosts: fixture.known_hosts.clone(),
        }
    }

    /// Process ID of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Returns the log lines collected so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// Options common to every OpenSSH client command against this server.
    pub fn client_options(&self, key: &Path) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
            "-o".into(),
            format!("IdentityFile={}", key.display()),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    /// Builds an `ssh` command with the client options and `key`. Add options, then the
    /// [`Server::target`] argument.
    pub fn ssh(&self, key: &Path) -> Command {
        let mut command = Command::new("ssh");
        command
            .args(self.client_options(key))
            .args(["-p", &self.address.port().to_string()]);
        command
    }

    /// Host argument for ssh.
    pub fn target(&self) -> String {
        "session@127.0.0.1".to_owned()
    }

    /// Runs `ssh target command` and returns its output.
    pub fn exec(&self, key: &Path, command: &str) -> Output {
        run(self
            .ssh(key)
            .arg(self.target())
            .arg(command)
            .stdin(Stdio::null()))
    }

    /// Dumps the server log to stderr (shown when a test fails).
    pub fn print_log(&self) {
        for line in self.log() {
            eprintln!("server: {line}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Extracts a string field from a JSON log line without a JSON parser.
fn json_field(line: &str, field: &str) -> Option<String> {
    let marker = format!("\"{field}\":\"");
    let start = line.find(&marker)? + marker.len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

/// Writes `size` bytes of deterministic pseudo-random data to `path`.
pub fn write_random_file(path: &Path, size: usize) {
    let mut file = std::fs::File::create(path).expect("create data file");
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < size {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        let count = block.len().min(size - written);
        file.write_all(&block[..count]).expect("write data file");
        written += count;
    }
}

/// SHA-256 of a file, hex encoded.
pub fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).expect("open file to hash");
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let count = file.read(&mut buffer).expect("read file to hash");
        if count == 0 {
            break;
        }
        hasher.update(&buffer[..count]);
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Starts a minimal HTTP server on a free loopback port that replies to every request with
/// `body`, and returns the port.
pub fn start_http_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind http server");
    let port = listener.local_addr().expect("http addr").port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let response = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
            });
        }
    });
    port
}

/// Sends an HTTP GET to `127.0.0.1:port` and returns the raw response.
pub fn http_get(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Returns a port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Polls `condition` every 100 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    condition()
}
