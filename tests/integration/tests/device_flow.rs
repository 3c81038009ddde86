//! Login without a registered key: the real OpenSSH client, the gateway with the device flow
//! on, the operator, and the Keycloak that `scripts/keycloak.sh start` runs. The client reads
//! the prompt through `SSH_ASKPASS`, and a browser stand-in signs in to Keycloak and approves
//! or denies the code.

mod device_support;
mod gateway_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use device_support::keycloak::admin::Admin;
use device_support::keycloak::browser::Consent;
use device_support::keycloak::relay::Relay;
use device_support::{LOGIN_TIMEOUT, PROMPT_TIMEOUT, approve_device_login, keycloak};
use gateway_support::{Env, TestSession, describe, fingerprint, public_key};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::ListParams;
use tokio::process::Command;

/// Starts a device-flow-capable ssh run in the test directory of `env`.
fn start_login(
    env: &Env,
    key: &Path,
    session: &str,
    command: &str,
    tag: &str,
) -> device_support::Login {
    device_support::Login::start(
        &env.dir.path().join(tag),
        &PathBuf::from(format!("{}.config", key.display())),
        &format!("{session}@gateway"),
        command,
    )
}

struct World {
    env: Env,
    keycloak: keycloak::Keycloak,
    alice_id: String,
}

/// Starts the operator and the gateway with the device flow against `issuer` (the test realm
/// when `None`).
async fn world(prefix: &str, issuer: Option<&str>) -> anyhow::Result<World> {
    world_with(prefix, issuer, &[]).await
}

/// Like [`world`], with `extra` gateway flags.
async fn world_with(prefix: &str, issuer: Option<&str>, extra: &[&str]) -> anyhow::Result<World> {
    let keycloak = keycloak::keycloak().await;
    let admin = Admin::login(&keycloak).await;
    let alice_id = admin.user_id(&keycloak.alice.username).await;
    let issuer = issuer.unwrap_or(&keycloak.issuer).to_owned();
    let mut flags = vec![
        "--oidc-issuer",
        issuer.as_str(),
        "--device-client-id",
        keycloak.cli_client_id.as_str(),
    ];
    flags.extend_from_slice(extra);
    let env = Env::start(prefix, &flags).await?;
    Ok(World {
        env,
        keycloak,
        alice_id,
    })
}

/// Generates a client key and its client configuration.
fn client_key(env: &Env, name: &str) -> PathBuf {
    let key = env.key(name);
    env.ssh_config(&key);
    key
}

/// Creates Alice's running session; its registered key is one the client never uses.
async fn alice_session(world: &World, name: &str, subnet: u8) -> anyhow::Result<TestSession> {
    let registered = world.env.key(&format!("{name}-registered"));
    let keys = format!("{}\n", public_key(&registered));
    let session = world
        .env
        .session(name, &world.alice_id, &keys, subnet)
        .await?;
    world.env.trust(&session.known_hosts_line);
    Ok(session)
}

async fn approve(world: &World, url: &str, code: &str, as_bob: bool, consent: Consent) {
    let user = if as_bob {
        &world.keycloak.bob
    } else {
        &world.keycloak.alice
    };
    approve_device_login(url, code, user, consent).await;
}

/// Checks that ssh failed to log in (status 255) and printed `message` on stderr.
fn assert_refused(output: &std::process::Output, message: &str) {
    assert_eq!(output.status.code(), Some(255), "{}", describe(output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(message),
        "expected {message:?}: {}",
        describe(output)
    );
}

/// Runs `command` in `session` with `key` only, keyboard-interactive off (BatchMode).
async fn key_login(
    world: &World,
    key: &Path,
    session: &str,
    command: &str,
) -> anyhow::Result<std::process::Output> {
    let mut ssh = world.env.ssh(key);
    ssh.arg(format!("{session}@gateway")).arg(command);
    Ok(tokio::task::spawn_blocking(move || ssh.output()).await??)
}

async fn approvals(world: &World) -> anyhow::Result<Vec<ConfigMap>> {
    let api = Api::<ConfigMap>::namespaced(world.env.client.clone(), world.env.ns());
    let list = api
        .list(&ListParams::default().labels(gateway::device::APPROVAL_SELECTOR))
        .await?;
    Ok(list.items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owner_approval_trusts_key_until_hibernation() -> anyhow::Result<()> {
    let _realm = keycloak::shared_realm().await;
    let world = world("dev-owner", None).await?;
    let session = alice_session(&world, "alice-dev", 81).await?;
    let laptop = client_key(&world.env, "laptop");

    let login = start_login(
        &world.env,
        &laptop,
        &session.name,
        "echo in-session; exit 7",
        "first",
    );
    let (prompt, url, code) = login.prompt().await?;
    assert!(
        prompt.contains(&format!("session {}", session.name)),
        "{prompt}"
    );
    assert!(
        url.contains(&code),
        "verification_uri_complete carries the code: {prompt}"
    );
    approve(&world, &url, &code, false, Consent::Accept).await;
    let output = login.finish().await?;
    assert_eq!(output.status.code(), Some(7), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("in-session"),
        "{}",
        describe(&output)
    );

    // The approval is in the cluster, for the key the client offered.
    let recorded = approvals(&world).await?;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let data = recorded[0].data.clone().unwrap_or_default();
    assert_eq!(data.get("fingerprint"), Some(&fingerprint(&laptop)));
    assert_eq!(data.get("user"), Some(&world.alice_id));

    // The approved key now logs in on its own, even where keyboard-interactive is off
    // (BatchMode). The gateway reads the approval from its watch cache, so allow it a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let output = key_login(&world, &laptop, &session.name, "echo key-only").await?;
        if output.status.success() {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "approved key rejected: {}",
            describe(&output)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An IDE's burst of parallel connections with the same key gets no prompt.
    let burst: Vec<device_support::Login> = (0..4)
        .map(|index| {
            start_login(
                &world.env,
                &laptop,
                &session.name,
                "echo again",
                &format!("burst-{index}"),
            )
        })
        .collect();
    for (index, login) in burst.into_iter().enumerate() {
        let output = login.finish().await?;
        assert!(output.status.success(), "{}", describe(&output));
        assert_eq!(login_prompts(&world, &format!("burst-{index}")), 0);
    }

    // A copy of the approval for another key, written by anyone who may create ConfigMaps,
    // does not carry a valid signature, so the gateway rejects that key.
    let intruder = client_key(&world.env, "intruder");
    let mut forged = recorded[0].clone();
    forged.metadata = kube::api::ObjectMeta {
        name: Some("forged-approval".to_owned()),
        labels: recorded[0].metadata.labels.clone(),
        ..Default::default()
    };
    forged
        .data
        .get_or_insert_with(Default::default)
        .insert("fingerprint".to_owned(), fingerprint(&intruder));
    Api::<ConfigMap>::namespaced(world.env.client.clone(), world.env.ns())
        .create(&kube::api::PostParams::default(), &forged)
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let output = key_login(&world, &intruder, &session.name, "true").await?;
    assert_refused(&output, "Permission denied");

    // Hibernation ends the trust: the same key gets the device flow again.
    world.env.hibernate(&session.name, true).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let login = start_login(&world.env, &laptop, &session.name, "true", "hibernated");
    let (prompt, _, _) = login.prompt().await?;
    assert!(prompt.contains("open this page"), "{prompt}");
    drop(login);

    // Resuming, even with the same pod, does not bring the trust back.
    world.env.hibernate(&session.name, false).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let output = key_login(&world, &laptop, &session.name, "true").await?;
    assert_refused(&output, "Permission denied");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_account_approving_gets_no_access() -> anyhow::Result<()> {
    let _realm = keycloak::shared_realm().await;
    let world = world("dev-other", None).await?;
    let session = alice_session(&world, "alice-oth", 82).await?;
    let key = client_key(&world.env, "bob-laptop");

    let login = start_login(&world.env, &key, &session.name, "true", "bob");
    let (_, url, code) = login.prompt().await?;
    approve(&world, &url, &code, true, Consent::Accept).await;
    let output = login.finish().await?;
    assert_refused(&output, "may not log in to session alice-oth");
    assert_eq!(
        login_prompts(&world, "bob"),
        1,
        "no second code after a refusal"
    );
    assert!(approvals(&world).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn denied_login_says_so() -> anyhow::Result<()> {
    let _realm = keycloak::shared_realm().await;
    let world = world("dev-deny", None).await?;
    let session = alice_session(&world, "alice-deny", 83).await?;
    let key = client_key(&world.env, "deny-laptop");

    let login = start_login(&world.env, &key, &session.name, "true", "deny");
    let (_, url, code) = login.prompt().await?;
    approve(&world, &url, &code, false, Consent::Deny).await;
    let output = login.finish().await?;
    assert_refused(&output, "denied in the browser");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_code_says_so() -> anyhow::Result<()> {
    let _realm = keycloak::exclusive_realm().await;
    let world = world("dev-expire", None).await?;
    let session = alice_session(&world, "alice-exp", 84).await?;
    let key = client_key(&world.env, "expire-laptop");
    let admin = Admin::login(&world.keycloak).await;
    let client_id = world.keycloak.cli_client_id.clone();
    admin
        .set_client_attribute(&client_id, "oauth2.device.code.lifespan", "12")
        .await;

    let login = start_login(&world.env, &key, &session.name, "true", "expire");
    let result = async {
        let (prompt, _, _) = login.prompt().await?;
        anyhow::ensure!(prompt.contains("expires in 1 min"), "{prompt}");
        login.finish().await
    }
    .await;
    admin
        .set_client_attribute(&client_id, "oauth2.device.code.lifespan", "600")
        .await;
    let output = result?;
    assert_refused(&output, "code expired");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_down_is_reported_and_keys_still_work() -> anyhow::Result<()> {
    let _realm = keycloak::shared_realm().await;
    let keycloak = keycloak::keycloak().await;
    let target = reqwest::Url::parse(&keycloak.url)?;
    let target_address = target
        .socket_addrs(|| None)?
        .into_iter()
        .next()
        .context("Keycloak address")?;
    let relay = Relay::start(target_address).await;
    let issuer = keycloak.issuer.replace(
        &format!(":{}", target.port().context("Keycloak port")?),
        &format!(":{}", relay.addr.port()),
    );
    let world = world("dev-down", Some(&issuer)).await?;
    let session = alice_session(&world, "alice-down", 85).await?;
    let laptop = client_key(&world.env, "down-laptop");

    // The provider goes away while the user is approving.
    let login = start_login(&world.env, &laptop, &session.name, "true", "mid-flow");
    login.prompt().await?;
    relay.shutdown();
    let output = login.finish().await?;
    assert_refused(&output, "stopped answering");

    // With the provider down from the start, the message comes at once.
    let login = start_login(&world.env, &laptop, &session.name, "true", "down");
    let output = login.finish().await?;
    assert_refused(&output, "is not answering");

    // Key logins do not depend on the provider.
    let registered = world.env.dir.path().join("alice-down-registered");
    let output = key_login(&world, &registered, &session.name, "echo key-login").await?;
    assert!(output.status.success(), "{}", describe(&output));
    Ok(())
}

fn login_prompts(world: &World, tag: &str) -> usize {
    device_support::prompts_in(&world.env.dir.path().join(tag))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminal_shows_the_prompt_and_takes_enter() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let _realm = keycloak::shared_realm().await;
    let world = world("dev-tty", None).await?;
    let session = alice_session(&world, "alice-tty", 86).await?;
    let key = client_key(&world.env, "tty-laptop");
    let config = format!("{}.config", key.display());

    // `script` gives ssh a pseudo-terminal, so OpenSSH prompts there as it does for a person.
    let ssh = format!(
        "ssh -F {config} -o BatchMode=no -o KbdInteractiveAuthentication=yes \
         -o PreferredAuthentications=publickey,keyboard-interactive {}@gateway echo in-tty",
        session.name
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &ssh, "/dev/null"])
        .env_remove("SSH_ASKPASS")
        .env_remove("DISPLAY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut screen = String::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PROMPT_TIMEOUT;
    while !screen.contains("Press Enter") {
        let read = tokio::time::timeout_at(deadline, stdout.read(&mut buffer))
            .await
            .with_context(|| format!("no prompt on the terminal; it showed: {screen:?}"))??;
        anyhow::ensure!(read > 0, "terminal closed before the prompt: {screen:?}");
        screen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    assert!(
        screen.contains(&format!("({}@127.0.0.1)", session.name)),
        "OpenSSH names the connection above the prompt: {screen:?}"
    );
    let (url, code) = device_support::url_and_code(&screen)?;

    // Enter before the approval: the gateway keeps waiting for the browser.
    stdin.write_all(b"\r").await?;
    approve(&world, &url, &code, false, Consent::Accept).await;
    let mut rest = String::new();
    tokio::time::timeout(LOGIN_TIMEOUT, stdout.read_to_string(&mut rest)).await??;
    let status = child.wait().await?;
    assert!(status.success(), "{screen}{rest}");
    assert!(rest.contains("in-tty"), "{rest:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_codes_are_rate_limited() -> anyhow::Result<()> {
    let _realm = keycloak::shared_realm().await;
    let world = world_with("dev-limit", None, &["--max-device-codes-per-address", "1"]).await?;
    let session = alice_session(&world, "alice-lim", 87).await?;
    let key = client_key(&world.env, "limit-laptop");

    let first = start_login(&world.env, &key, &session.name, "true", "limit-1");
    first.prompt().await?;
    let second = start_login(&world.env, &key, &session.name, "true", "limit-2");
    let output = second.finish().await?;
    assert_refused(
        &output,
        "too many login codes were requested from your address",
    );
    assert_eq!(login_prompts(&world, "limit-2"), 0);
    drop(first);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_terminal_the_url_goes_to_stderr() -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let _realm = keycloak::shared_realm().await;
    let world = world("dev-notty", None).await?;
    let session = alice_session(&world, "alice-notty", 88).await?;
    let key = client_key(&world.env, "notty-laptop");

    // `setsid` leaves ssh without a controlling terminal, and there is no askpass program:
    // OpenSSH cannot prompt, but it prints the summary line to stderr.
    let mut child = Command::new("setsid")
        .arg("ssh")
        .arg("-F")
        .arg(format!("{}.config", key.display()))
        .args([
            "-o",
            "BatchMode=no",
            "-o",
            "KbdInteractiveAuthentication=yes",
            "-o",
            "PreferredAuthentications=publickey,keyboard-interactive",
        ])
        .arg(format!("{}@gateway", session.name))
        .arg("echo no-tty")
        .env_remove("SSH_ASKPASS")
        .env_remove("DISPLAY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stderr = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let summary = tokio::time::timeout(PROMPT_TIMEOUT, async {
        while let Some(line) = stderr.next_line().await? {
            if line.contains("Login without a key") {
                return Ok(line);
            }
        }
        anyhow::bail!("stderr ended without the summary line")
    })
    .await
    .context("no summary line on stderr")??;
    let (url, code) = device_support::url_and_code(&summary)?;
    approve(&world, &url, &code, false, Consent::Accept).await;
    let output = tokio::time::timeout(LOGIN_TIMEOUT, child.wait_with_output()).await??;
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("no-tty"));
    Ok(())
}
