//! Shell and exec sessions through the real OpenSSH client.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::{Fixture, Server, run};

#[test]
fn exec_exit_status_propagates() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let output = server.exec(&fixture.user_key, "exit 7");
    if output.status.code() != Some(7) {
        server.print_log();
    }
    assert_eq!(output.status.code(), Some(7), "{output:?}");
}

#[test]
fn exec_separates_stdout_and_stderr() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let output = server.exec(&fixture.user_key, "echo out; echo err >&2");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");
}

#[test]
fn stdin_is_piped_and_eof_propagates() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let mut child = server
        .ssh(&fixture.user_key)
        .arg(server.target())
        .arg("sha256sum; exit 3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ssh");
    let data: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|index| (index % 251) as u8)
        .collect();
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        stdin.write_all(&data).expect("write stdin");
        // Dropping stdin sends EOF, which must reach sha256sum for it to finish.
    });
    let output = child.wait_with_output().expect("wait ssh");
    writer.join().expect("writer thread");
    assert_eq!(output.status.code(), Some(3));
    let expected = {
        use sha2::{Digest, Sha256};
        let data: Vec<u8> = (0..4 * 1024 * 1024u32)
            .map(|index| (index % 251) as u8)
            .collect();
        Sha256::digest(&data)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with(&expected),
        "remote hash {stdout:?} != {expected}"
    );
}

#[test]
fn tty_shell_exit_status() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let mut child = server
        .ssh(&fixture.user_key)
        .arg("-tt")
        .arg(server.target())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ssh -tt");
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"echo marker-$((40+2)) $TERM; tty; exit 5\n")
        .expect("write command");
    let output = child.wait_with_output().expect("wait ssh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(5), "{stdout}");
    assert!(stdout.contains("marker-42"), "shell output: {stdout}");
    assert!(stdout.contains("/dev/pts/"), "no terminal: {stdout}");
}

#[test]
fn tty_exec_reports_status_and_terminal() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let output = run(server
        .ssh(&fixture.user_key)
        .arg("-tt")
        .arg(server.target())
        .arg("test -t 0 && echo is-a-tty; stty size; exit 4")
        .stdin(Stdio::null()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(4), "{stdout}");
    assert!(stdout.contains("is-a-tty"), "{stdout}");
}

#[test]
fn session_environment_is_set() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let output = run(server
        .ssh(&fixture.user_key)
        .args(["-o", "SetEnv=LANG=C.UTF-8 LC_TEST=yes SECRET_VAR=no"])
        .arg(server.target())
        .arg("echo \"$SSH_CONNECTION|$SSH_CLIENT|$USER|$LOGNAME|$HOME|$SHELL|$LANG|$LC_TEST|${SECRET_VAR-unset}|${RENKU_SSHD_LISTEN-unset}\"; test -n \"$PATH\"")
        .stdin(Stdio::null()));
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = stdout.trim().split('|').collect();
    assert_eq!(fields.len(), 10, "{stdout}");
    assert!(
        fields[0].starts_with("127.0.0.1 "),
        "SSH_CONNECTION {}",
        fields[0]
    );
    assert!(fields[0].ends_with(&format!(" 127.0.0.1 {}", server.address.port())));
    assert!(
        fields[1].ends_with(&format!(" {}", server.address.port())),
        "SSH_CLIENT {}",
        fields[1]
    );
    assert!(!fields[2].is_empty(), "USER");
    assert_eq!(fields[2], fields[3], "LOGNAME");
    assert!(!fields[4].is_empty(), "HOME");
    assert!(!fields[5].is_empty(), "SHELL");
    assert_eq!(fields[6], "C.UTF-8", "LANG");
    assert_eq!(fields[7], "yes", "LC_TEST");
    assert_eq!(
        fields[8], "unset",
        "variables outside LANG and LC_* are ignored"
    );
    assert_eq!(
        fields[9], "unset",
        "server settings do not leak into sessions"
    );
}

#[test]
fn killed_command_reports_exit_signal() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let output = server.exec(&fixture.user_key, "kill -TERM $$");
    // The OpenSSH client exits with 255 when the remote command died from a signal.
    assert_eq!(output.status.code(), Some(255), "{output:?}");
    let reported = server
        .log()
        .iter()
        .any(|line| line.contains("session channel finished") && line.contains("TERM"));
    assert!(reported, "no exit-signal TERM in the server log");
}

#[test]
fn disconnect_hangs_up_running_command() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let marker = fixture.path("still-running");
    let command = format!("trap 'touch {}' HUP; sleep 30 & wait", marker.display());
    let mut child = server
        .ssh(&fixture.user_key)
        .arg(server.target())
        .arg(command)
        .stdin(Stdio::null())
        .spawn()
        .expect("start ssh");
    std::thread::sleep(Duration::from_secs(2));
    child.kill().expect("kill ssh client");
    let _ = child.wait();
    let hung_up = common::wait_until(Duration::from_secs(10), || marker.exists());
    assert!(
        hung_up,
        "the shell did not receive SIGHUP after the client disconnected"
    );
}

#[test]
fn max_sessions_limits_session_channels() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &["--max-sessions", "1"]);
    let control = fixture.path("control");
    let mut master = server
        .ssh(&fixture.user_key)
        .args(["-o", "ControlMaster=yes", "-o"])
        .arg(format!("ControlPath={}", control.display()))
        .arg(server.target())
        .arg("sleep 20")
        .stdin(Stdio::null())
        .spawn()
        .expect("start control master");
    assert!(common::wait_until(Duration::from_secs(10), || control.exists()));
    let second = run(server
        .ssh(&fixture.user_key)
        .args(["-o", "ControlMaster=no", "-o"])
        .arg(format!("ControlPath={}", control.display()))
        .arg(server.target())
        .arg("true")
        .stdin(Stdio::null()));
    let _ = master.kill();
    let _ = master.wait();
    // The OpenSSH mux client exits 0 even when the session is refused, so check its message.
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("open refused"),
        "a second session channel was allowed: {second:?}"
    );
}

#[test]
fn unused_connection_is_closed() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &["--unused-connection-timeout", "2"]);
    let started = std::time::Instant::now();
    let output = run(server
        .ssh(&fixture.user_key)
        .arg("-N")
        .arg(server.target())
        .stdin(Stdio::null()));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "connection lingered"
    );
    assert!(!output.status.success() || started.elapsed() >= Duration::from_secs(2));
    assert!(
        server
            .log()
            .iter()
            .any(|line| line.contains("unused connection timeout"))
    );
}

#[test]
fn login_grace_time_closes_silent_connection() {
    use std::io::Read;
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &["--login-grace-time", "1"]);
    let mut stream = std::net::TcpStream::connect(server.address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 256];
    // The server sends its identification string, then closes after the grace time.
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(error) => panic!("connection not closed: {error}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
}

#[test]
fn finished_channels_release_descriptors() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let control = fixture.path("control");
    let control_path = format!("ControlPath={}", control.display());
    let mut master = server
        .ssh(&fixture.user_key)
        .args(["-N", "-o", "ControlMaster=yes", "-o", &control_path])
        .arg(server.target())
        .stdin(Stdio::null())
        .spawn()
        .expect("start control master");
    assert!(common::wait_until(Duration::from_secs(10), || control.exists()));
    let open_descriptors = || {
        std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    };

    let run_on_master = || {
        run(server
            .ssh(&fixture.user_key)
            .args(["-tt", "-o", "ControlMaster=no", "-o", &control_path])
            .arg(server.target())
            .arg("true")
            .stdin(Stdio::null()))
    };
    assert!(run_on_master().status.success());
    let before = open_descriptors();
    for _ in 0..20 {
        assert!(run_on_master().status.success());
    }
    let after = open_descriptors();

    let _ = master.kill();
    let _ = master.wait();
    assert!(
        after <= before + 2,
        "descriptors grew from {before} to {after} over 20 channels"
    );
}
