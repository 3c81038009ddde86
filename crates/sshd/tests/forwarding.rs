//! Local and remote TCP forwarding and agent forwarding with the real OpenSSH client.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Fixture, Server, free_port, http_get, run, start_http_server, wait_until};

/// Kills a background ssh client when the test ends.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn local_forward_reaches_loopback_http_server() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let http_port = start_http_server("through the tunnel");
    let local_port = free_port();
    let _tunnel = Background(
        server
            .ssh(&fixture.user_key)
            .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
            .arg(format!("127.0.0.1:{local_port}:localhost:{http_port}"))
            .arg(server.target())
            .stdin(Stdio::null())
            .spawn()
            .expect("start ssh -L"),
    );
    let mut response = String::new();
    let reached = wait_until(Duration::from_secs(15), || match http_get(local_port) {
        Ok(text) => {
            response = text;
            true
        }
        Err(_) => false,
    });
    assert!(reached, "tunnel never answered");
    assert!(response.starts_with("HTTP/1.0 200 OK"), "{response}");
    assert!(response.ends_with("through the tunnel"), "{response}");
    // A second request over a new channel of the same connection.
    let again = http_get(local_port).expect("second request");
    assert!(again.ends_with("through the tunnel"), "{again}");
}

#[test]
fn local_forward_can_be_disabled() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &["--allow-tcp-forwarding", "remote"]);
    let http_port = start_http_server("unreachable");
    let output = run(server
        .ssh(&fixture.user_key)
        .args(["-W"])
        .arg(format!("127.0.0.1:{http_port}"))
        .arg(server.target())
        .stdin(Stdio::null()));
    assert!(
        !output.status.success(),
        "forwarding was allowed: {output:?}"
    );
    let rejected = server
        .log()
        .iter()
        .any(|line| line.contains("direct-tcpip rejected"));
    assert!(rejected, "no rejection in the server log");
}

#[test]
fn remote_forward_reaches_client_side_server() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let client_port = start_http_server("from the client side");
    let remote_port = free_port();
    let output = run(server
        .ssh(&fixture.user_key)
        .args(["-o", "ExitOnForwardFailure=yes", "-R"])
        .arg(format!("{remote_port}:127.0.0.1:{client_port}"))
        .arg(server.target())
        .arg(format!(
            "curl -sS --max-time 10 http://127.0.0.1:{remote_port}/"
        ))
        .stdin(Stdio::null()));
    if !output.status.success() {
        server.print_log();
    }
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "from the client side"
    );
}

#[test]
fn remote_forward_binds_loopback_by_default() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let client_port = start_http_server("x");
    let remote_port = free_port();
    let output = run(server
        .ssh(&fixture.user_key)
        .args(["-o", "ExitOnForwardFailure=yes", "-R"])
        .arg(format!("{remote_port}:127.0.0.1:{client_port}"))
        .arg(server.target())
        .arg(format!("ss -Hltn 'sport = :{remote_port}'"))
        .stdin(Stdio::null()));
    assert!(output.status.success(), "{output:?}");
    let listeners = String::from_utf8_lossy(&output.stdout);
    let addresses: Vec<&str> = listeners
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .collect();
    assert!(
        !addresses.is_empty(),
        "no listener on port {remote_port}: {listeners}"
    );
    for address in addresses {
        assert!(
            address.starts_with("127.0.0.1:") || address.starts_with("[::1]:"),
            "forward bound to {address}"
        );
    }
}

/// Starts an ssh-agent holding `key`; returns the agent and its socket.
fn start_agent(fixture: &Fixture, key: &std::path::Path) -> (Background, std::path::PathBuf) {
    common::require_tool("ssh-agent");
    common::require_tool("ssh-add");
    let socket = fixture.path("agent.sock");
    let agent = Background(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("start ssh-agent"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || socket.exists()),
        "agent socket"
    );
    let added = run(Command::new("ssh-add")
        .arg(key)
        .env("SSH_AUTH_SOCK", &socket));
    assert!(added.status.success(), "ssh-add failed: {added:?}");
    (agent, socket)
}

#[test]
fn agent_forwarding_lists_the_key() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let (_agent, agent_socket) = start_agent(&fixture, &fixture.user_key);
    let output = run(server
        .ssh(&fixture.user_key)
        .arg("-A")
        .arg(server.target())
        .arg("ssh-add -l; stat -c %a \"$(dirname \"$SSH_AUTH_SOCK\")\"")
        .env("SSH_AUTH_SOCK", &agent_socket)
        .stdin(Stdio::null()));
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let listing = run(Command::new("ssh-keygen").arg("-lf").arg(&fixture.user_key));
    let fingerprint = String::from_utf8_lossy(&listing.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(fingerprint.starts_with("SHA256:"), "{listing:?}");
    assert!(
        stdout.contains(&fingerprint),
        "agent key not listed: {stdout}"
    );
    assert!(
        stdout.lines().any(|line| line == "700"),
        "agent directory not private: {stdout}"
    );
}

#[test]
fn agent_forwarding_can_be_disabled() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &["--allow-agent-forwarding", "no"]);
    let (_agent, agent_socket) = start_agent(&fixture, &fixture.user_key);
    let output = run(server
        .ssh(&fixture.user_key)
        .arg("-A")
        .arg(server.target())
        .arg("echo \"socket=${SSH_AUTH_SOCK-unset}\"")
        .env("SSH_AUTH_SOCK", &agent_socket)
        .stdin(Stdio::null()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("socket=unset"), "{stdout}");
}
