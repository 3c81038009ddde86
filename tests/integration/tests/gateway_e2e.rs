//! End-to-end tests of the SSH gateway with the real OpenSSH client: the gateway and the
//! operator run in-process against the local control plane, each session's pod is a network
//! namespace running the real `renku-sshd` from the Secrets the operator wrote.
//!
//! The tests need root (network namespaces), `ip`, `ssh`, `sftp`, `scp`, `ssh-agent`,
//! `ssh-add` and `python3`.

mod gateway_support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gateway_support::{Env, describe, fingerprint, public_key, require_tool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs a blocking command off the runtime's worker threads.
async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || {
        command
            .output()
            .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
    })
    .await
    .expect("command task")
}

/// Runs a command with `input` on its standard input.
async fn output_with_input(mut command: Command, input: Vec<u8>) -> Output {
    tokio::task::spawn_blocking(move || {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let output = child.wait_with_output().expect("wait");
        let _ = writer.join();
        output
    })
    .await
    .expect("command task")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits until a TCP port on 127.0.0.1 accepts connections.
async fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn channels_relay_through_gateway() -> anyhow::Result<()> {
    require_tool("sftp");
    require_tool("scp");
    require_tool("ssh-agent");
    let env = Env::start("gw-relay", &[]).await?;
    let key = env.key("alice");
    let session = env
        .session("relay-s1", "alice-sub", &public_key(&key), 11)
        .await?;
    let name = session.name.as_str();

    // exec: exit codes, stdout, stderr and stdin with EOF.
    let mut command = env.ssh(&key);
    command.args(["-l", name, "gateway", "echo out; echo err >&2; exit 7"]);
    let result = output(command).await;
    assert_eq!(result.status.code(), Some(7), "{}", describe(&result));
    assert_eq!(stdout(&result), "out\n");
    assert!(stderr(&result).contains("err"), "{}", describe(&result));

    let mut command = env.ssh(&key);
    command.args(["-l", name, "gateway", "wc -c"]);
    let result = output_with_input(command, vec![b'x'; 300_000]).await;
    assert!(result.status.success(), "{}", describe(&result));
    assert_eq!(stdout(&result).trim(), "300000");

    // shell with a terminal (`ssh -tt`): the command's exit status comes back.
    let mut command = env.ssh(&key);
    command.args(["-tt", "-l", name, "gateway"]);
    let result = output_with_input(command, b"echo shell-$((40+2)); exit 3\n".to_vec()).await;
    assert_eq!(result.status.code(), Some(3), "{}", describe(&result));
    assert!(
        stdout(&result).contains("shell-42"),
        "{}",
        describe(&result)
    );

    // sftp and scp round trip of 4 MiB of random bytes.
    let local = env.dir.path().join("upload.bin");
    let mut data = vec![0u8; 4 << 20];
    for (index, byte) in data.iter_mut().enumerate() {
        *byte = (index.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    std::fs::write(&local, &data)?;
    let remote = session.sandbox.dir().join("remote.bin");
    let back = env.dir.path().join("download.bin");
    let batch = env.dir.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} {}\nget {} {}\n",
            local.display(),
            remote.display(),
            remote.display(),
            back.display()
        ),
    )?;
    let mut command = Command::new("sftp");
    command
        .arg("-F")
        .arg(env.ssh_config(&key))
        .arg("-b")
        .arg(&batch)
        .arg(format!("{name}@gateway"));
    let result = output(command).await;
    assert!(result.status.success(), "{}", describe(&result));
    assert_eq!(
        std::fs::read(&back)?,
        data,
        "sftp round trip changed the file"
    );

    let scp_back = env.dir.path().join("scp.bin");
    let mut command = Command::new("scp");
    command
        .arg("-F")
        .arg(env.ssh_config(&key))
        .arg(format!("{name}@gateway:{}", remote.display()))
        .arg(&scp_back);
    let result = output(command).await;
    assert!(result.status.success(), "{}", describe(&result));
    assert_eq!(std::fs::read(&scp_back)?, data, "scp changed the file");

    // ssh -L to an HTTP server on the pod's localhost.
    let web_root = session.sandbox.dir().join("www");
    std::fs::create_dir_all(&web_root)?;
    std::fs::write(web_root.join("marker.txt"), "served from the pod\n")?;
    let mut sandbox = session.sandbox;
    sandbox.spawn(
        "http",
        std::path::Path::new("python3"),
        &[
            "-m",
            "http.server",
            "8000",
            "--bind",
            "127.0.0.1",
            "--directory",
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .chain([web_root.display().to_string()])
        .collect::<Vec<_>>(),
    )?;
    let local_port = free_port();
    let mut tunnel = env.ssh(&key);
    tunnel.args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("{local_port}:127.0.0.1:8000"),
        "-l",
        name,
        "gateway",
    ]);
    let mut tunnel = tunnel.stderr(Stdio::piped()).spawn()?;
    wait_for_port(local_port).await;
    let body = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", local_port)).await?;
            stream
                .write_all(b"GET /marker.txt HTTP/1.0\r\n\r\n")
                .await?;
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response).await;
            if response.contains("served from the pod") || Instant::now() > deadline {
                break response;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    assert!(
        body.contains("served from the pod"),
        "HTTP through -L: {body}; http log: {}",
        sandbox.log("http")
    );

    // ssh -R: a command in the session reaches a server on the client side.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let client_port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"pong from the client\n").await;
        }
    });
    let probe = "import socket,time\n\
                 for attempt in range(50):\n    \
                 try:\n        s=socket.create_connection(('127.0.0.1',9000)); break\n    \
                 except OSError: time.sleep(0.1)\n\
                 print(s.recv(100).decode().strip())";
    let mut command = env.ssh(&key);
    command.args([
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        &format!("9000:127.0.0.1:{client_port}"),
        "-l",
        name,
        "gateway",
    ]);
    command.arg(format!("python3 -c \"{probe}\""));
    let result = output(command).await;
    assert!(result.status.success(), "{}", describe(&result));
    assert_eq!(stdout(&result).trim(), "pong from the client");

    // ssh -J: the user logs in to the sidecar end to end, checking its host key.
    env.trust(&session.known_hosts_line);
    let mut command = env.ssh(&key);
    command.args([
        "-J",
        &format!("{name}@gateway"),
        "-l",
        name,
        name,
        "echo jumped; echo $SSH_CONNECTION",
    ]);
    let result = output(command).await;
    assert!(result.status.success(), "{}", describe(&result));
    assert!(
        stdout(&result).starts_with("jumped"),
        "{}",
        describe(&result)
    );

    // ssh -A: the forwarded agent lists the user's key inside the session.
    let agent_socket = env.dir.path().join("agent.sock");
    let agent = output({
        let mut command = Command::new("ssh-agent");
        command.arg("-a").arg(&agent_socket);
        command
    })
    .await;
    assert!(agent.status.success(), "{}", describe(&agent));
    let agent_pid = stdout(&agent)
        .split(';')
        .find_map(|part| part.trim().strip_prefix("SSH_AGENT_PID="))
        .map(str::to_owned)
        .expect("agent pid");
    let added = output({
        let mut command = Command::new("ssh-add");
        command.env("SSH_AUTH_SOCK", &agent_socket).arg(&key);
        command
    })
    .await;
    assert!(added.status.success(), "{}", describe(&added));
    let mut command = env.ssh(&key);
    command.env("SSH_AUTH_SOCK", &agent_socket);
    command.args([
        "-A",
        "-o",
        "IdentityAgent=SSH_AUTH_SOCK",
        "-l",
        name,
        "gateway",
        "ssh-add -l",
    ]);
    let result = output(command).await;
    let _ = Command::new("kill").arg(&agent_pid).status();
    assert!(result.status.success(), "{}", describe(&result));
    assert!(
        stdout(&result).contains(&fingerprint(&key)),
        "{}",
        describe(&result)
    );

    // The audit metrics saw the channels.
    let metrics = env.gateway.metrics_text();
    assert!(metrics.contains("channel_type=\"session\""), "{metrics}");
    assert!(
        metrics.contains("channel_type=\"direct-tcpip\""),
        "{metrics}"
    );
    assert!(metrics.contains("channel_type=\"proxy-jump\""), "{metrics}");
    assert!(
        metrics.contains("channel_type=\"forwarded-tcpip\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("channel_type=\"auth-agent@openssh.com\""),
        "{metrics}"
    );
    drop(sandbox);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_of_one_user_never_open_another_session() -> anyhow::Result<()> {
    let env = Env::start("gw-isolation", &[]).await?;
    let alice = env.key("alice");
    let bob = env.key("bob");
    let alice_session = env
        .session("iso-alice", "alice-sub", &public_key(&alice), 21)
        .await?;
    let bob_session = env
        .session("iso-bob", "bob-sub", &public_key(&bob), 22)
        .await?;
    env.trust(&alice_session.known_hosts_line);
    env.trust(&bob_session.known_hosts_line);

    // Each key opens its owner's session.
    for (key, session) in [(&alice, "iso-alice"), (&bob, "iso-bob")] {
        let mut command = env.ssh(key);
        command.args(["-l", session, "gateway", "echo ok"]);
        let result = output(command).await;
        assert!(result.status.success(), "{session}: {}", describe(&result));
    }

    // Bob's key through the gateway into Alice's session.
    let mut command = env.ssh(&bob);
    command.args(["-l", "iso-alice", "gateway", "echo breached"]);
    let result = output(command).await;
    assert_eq!(result.status.code(), Some(255), "{}", describe(&result));
    assert!(
        stderr(&result).contains("Permission denied"),
        "{}",
        describe(&result)
    );

    // Bob logged in to his own session, jumping on to Alice's sidecar.
    let mut command = env.ssh(&bob);
    command.args([
        "-J",
        "iso-bob@gateway",
        "-l",
        "iso-alice",
        "iso-alice",
        "echo breached",
    ]);
    let result = output(command).await;
    assert_ne!(result.status.code(), Some(0), "{}", describe(&result));
    assert!(
        !stdout(&result).contains("breached"),
        "{}",
        describe(&result)
    );

    // Bob jumping as Alice's session name.
    let mut command = env.ssh(&bob);
    command.args([
        "-J",
        "iso-alice@gateway",
        "-l",
        "iso-alice",
        "iso-alice",
        "echo breached",
    ]);
    let result = output(command).await;
    assert_ne!(result.status.code(), Some(0), "{}", describe(&result));
    assert!(
        !stdout(&result).contains("breached"),
        "{}",
        describe(&result)
    );

    // Bob's key straight at Alice's sidecar.
    let mut command = env.ssh(&bob);
    command.args([
        "-o",
        "HostKeyAlias=iso-alice",
        "-p",
        "2222",
        "-l",
        "iso-alice",
    ]);
    command
        .arg(alice_session.sandbox.pod_ip().to_string())
        .arg("echo breached");
    let result = output(command).await;
    assert_eq!(result.status.code(), Some(255), "{}", describe(&result));
    assert!(
        stderr(&result).contains("Permission denied"),
        "{}",
        describe(&result)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_changes_apply_to_logins_and_live_connections() -> anyhow::Result<()> {
    let env = Env::start("gw-keys", &[]).await?;
    let first = env.key("first");
    let second = env.key("second");
    let session = env
        .session("keys-s1", "carol-sub", &public_key(&first), 31)
        .await?;
    let name = session.name.as_str();

    // A key added to the user's Secret logs in within 2 s, with nothing restarted.
    let both = format!("{}\n{}\n", public_key(&first), public_key(&second));
    env.set_user_keys(name, &both).await?;
    let added = Instant::now();
    let elapsed = loop {
        let mut command = env.ssh(&second);
        command.args(["-l", name, "gateway", "true"]);
        let result = output(command).await;
        if result.status.success() {
            break added.elapsed();
        }
        assert!(
            added.elapsed() < Duration::from_secs(10),
            "new key never logged in: {}",
            describe(&result)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("new key logged in {elapsed:?} after the Secret changed");
    assert!(elapsed < Duration::from_secs(2), "new key took {elapsed:?}");

    // A live connection with the first key is cut when that key is removed.
    let mut live = env.ssh(&first);
    live.args([
        "-l",
        name,
        "gateway",
        "echo started; sleep 60; echo survived",
    ]);
    live.stdout(Stdio::piped()).stderr(Stdio::piped());
    let live = live.spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.set_user_keys(name, &format!("{}\n", public_key(&second)))
        .await?;
    let removed = Instant::now();
    let live = tokio::task::spawn_blocking(move || live.wait_with_output()).await??;
    let cut_after = removed.elapsed();
    println!("live connection cut {cut_after:?} after the key was removed");
    assert!(
        cut_after < Duration::from_secs(10),
        "connection lived {cut_after:?}"
    );
    assert!(!stdout(&live).contains("survived"), "{}", describe(&live));
    assert!(
        stderr(&live).contains("no longer accepted"),
        "{}",
        describe(&live)
    );

    // The removed key is refused; the remaining one still works.
    let mut command = env.ssh(&first);
    command.args(["-l", name, "gateway", "true"]);
    let result = output(command).await;
    assert_eq!(result.status.code(), Some(255), "{}", describe(&result));
    let mut command = env.ssh(&second);
    command.args(["-l", name, "gateway", "true"]);
    let result = output(command).await;
    assert!(result.status.success(), "{}", describe(&result));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hibernated_session_gets_message() -> anyhow::Result<()> {
    let env = Env::start("gw-hibernate", &[]).await?;
    let key = env.key("dave");
    let session = env
        .session("hib-s1", "dave-sub", &public_key(&key), 41)
        .await?;
    let name = session.name.as_str();
    env.trust(&session.known_hosts_line);

    // A live connection is closed with the message when the session hibernates.
    let mut live = env.ssh(&key);
    live.args(["-l", name, "gateway", "echo started; sleep 60"]);
    live.stdout(Stdio::piped()).stderr(Stdio::piped());
    let live = live.spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.hibernate(name, true).await?;
    let live = tokio::task::spawn_blocking(move || live.wait_with_output()).await??;
    assert!(
        stderr(&live).contains("is hibernated"),
        "{}",
        describe(&live)
    );

    // A new login gets the message on its session channel.
    let expected = format!("session {name} is hibernated: resume it in Renku, then connect again");
    let deadline = Instant::now() + Duration::from_secs(10);
    let result = loop {
        let mut command = env.ssh(&key);
        command.args(["-l", name, "gateway", "true"]);
        let result = output(command).await;
        if stderr(&result).contains(&expected) || Instant::now() > deadline {
            break result;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(result.status.code(), Some(1), "{}", describe(&result));
    assert!(stderr(&result).contains(&expected), "{}", describe(&result));

    // `ssh -J` gets it as the disconnect reason.
    let mut command = env.ssh(&key);
    command.args(["-J", &format!("{name}@gateway"), "-l", name, name, "true"]);
    let result = output(command).await;
    assert_ne!(result.status.code(), Some(0), "{}", describe(&result));
    assert!(
        stderr(&result).contains("is hibernated"),
        "{}",
        describe(&result)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_look_alike_and_are_rate_limited() -> anyhow::Result<()> {
    let env = Env::start(
        "gw-refuse",
        &["--max-failed-logins-per-user", "3", "--login-backoff", "1m"],
    )
    .await?;
    let key = env.key("erin");
    let stranger = env.key("stranger");
    let session = env
        .session("refuse-s1", "erin-sub", &public_key(&key), 51)
        .await?;
    let name = session.name.as_str();

    // An unknown session and a wrong key get the same reply, apart from the user name in it.
    let mut command = env.ssh(&key);
    command.args(["-l", "no-such-session", "gateway", "true"]);
    let unknown = output(command).await;
    let mut command = env.ssh(&stranger);
    command.args(["-l", "refuse-s2", "gateway", "true"]);
    let _ = output(command).await;
    let mut command = env.ssh(&stranger);
    command.args(["-l", name, "gateway", "true"]);
    let wrong_key = output(command).await;
    assert_eq!(unknown.status.code(), Some(255), "{}", describe(&unknown));
    assert_eq!(
        wrong_key.status.code(),
        Some(255),
        "{}",
        describe(&wrong_key)
    );
    assert_eq!(
        stderr(&unknown).replace("no-such-session", "NAME"),
        stderr(&wrong_key).replace(name, "NAME"),
        "the answers differ"
    );

    // Once strangers reach the failed-login limit for the name, their attempts are blocked,
    // but the owner's key still logs in: failing on purpose cannot lock the owner out.
    for _ in 0..3 {
        let mut command = env.ssh(&stranger);
        command.args(["-l", name, "gateway", "true"]);
        let _ = output(command).await;
    }
    assert!(
        env.gateway
            .metrics_text()
            .contains("result=\"rate_limited\""),
        "rate limit not applied: {}",
        env.gateway.metrics_text()
    );
    let mut command = env.ssh(&key);
    command.args(["-l", name, "gateway", "true"]);
    let result = output(command).await;
    assert!(
        result.status.success(),
        "owner locked out: {}",
        describe(&result)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_closes_connections_with_message() -> anyhow::Result<()> {
    let mut env = Env::start("gw-shutdown", &[]).await?;
    let key = env.key("frank");
    let session = env
        .session("down-s1", "frank-sub", &public_key(&key), 61)
        .await?;
    let name = session.name.as_str();

    let mut live = env.ssh(&key);
    live.args([
        "-l",
        name,
        "gateway",
        "echo started; sleep 60; echo survived",
    ]);
    live.stdout(Stdio::piped()).stderr(Stdio::piped());
    let live = live.spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The test gateway's grace period is 1 s; then open connections get the message.
    let stopping = Instant::now();
    env.gateway.stop().await;
    let live = tokio::task::spawn_blocking(move || live.wait_with_output()).await??;
    let closed_after = stopping.elapsed();
    assert!(
        closed_after < Duration::from_secs(10),
        "connection lived {closed_after:?}"
    );
    assert!(stdout(&live).contains("started"), "{}", describe(&live));
    assert!(!stdout(&live).contains("survived"), "{}", describe(&live));
    assert!(
        stderr(&live).contains("the SSH gateway is restarting"),
        "{}",
        describe(&live)
    );

    // Nothing listens any more.
    let refused = tokio::net::TcpStream::connect(env.gateway.address).await;
    assert!(refused.is_err(), "the gateway still accepts connections");
    Ok(())
}
