//! Device-flow logins with the real OpenSSH client: an askpass program that records each
//! prompt and answers Enter, and a browser stand-in that approves the code at the local
//! Keycloak that `scripts/keycloak.sh start` runs.

#![allow(dead_code)]

#[path = "../../../../crates/oidc/tests/common/mod.rs"]
pub mod keycloak;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

use self::keycloak::browser::{Browser, Consent};

/// Time allowed for the prompt to reach the askpass program.
pub const PROMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for a whole ssh run, approval included.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(90);

/// Writes an askpass program that appends each prompt to `log` and answers with an empty line.
fn write_askpass(dir: &Path) -> (PathBuf, PathBuf) {
    let script = dir.join("askpass.sh");
    let log = dir.join("askpass.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n--end--\\n' \"$1\" >> '{}'\necho\n",
            log.display()
        ),
    )
    .expect("write askpass");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (script, log)
}

/// Returns the number of prompts recorded in the folder of a [`Login`].
pub fn prompts_in(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("askpass.log"))
        .unwrap_or_default()
        .matches("--end--")
        .count()
}

/// One ssh run that may use keyboard-interactive, with its prompts in a log file.
pub struct Login {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Login {
    /// Starts `ssh -F <copy of config> <destination> <command>` in the new folder `dir`,
    /// allowing keyboard-interactive, with prompts going to the askpass program.
    pub fn start(dir: &Path, config: &Path, destination: &str, command: &str) -> Login {
        std::fs::create_dir_all(dir).expect("login dir");
        let (askpass, log) = write_askpass(dir);
        // Parallel logins may share a key, so each reads a copy of its configuration.
        let own_config = dir.join("ssh_config");
        std::fs::copy(config, &own_config).expect("copy ssh config");
        let child = Command::new("ssh")
            .arg("-F")
            .arg(&own_config)
            .args([
                "-o",
                "BatchMode=no",
                "-o",
                "PreferredAuthentications=publickey,keyboard-interactive",
                "-o",
                "KbdInteractiveAuthentication=yes",
            ])
            .arg(destination)
            .arg(command)
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start ssh");
        Login { child, log }
    }

    /// Waits for the first prompt and returns it with the verification URL and the user code
    /// in it.
    pub async fn prompt(&self) -> anyhow::Result<(String, String, String)> {
        let deadline = tokio::time::Instant::now() + PROMPT_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(prompt) = text.split("--end--").next().filter(|p| !p.is_empty()) {
                let (url, code) =
                    url_and_code(prompt).with_context(|| format!("prompt {prompt:?}"))?;
                return Ok((prompt.to_owned(), url, code));
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no prompt reached the askpass program within {PROMPT_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for ssh to exit and returns its output.
    pub async fn finish(self) -> anyhow::Result<std::process::Output> {
        tokio::time::timeout(LOGIN_TIMEOUT, self.child.wait_with_output())
            .await
            .context("ssh did not finish")?
            .context("ssh output")
    }
}

/// Returns the verification URL and the user code that the gateway's text shows, from the
/// prompt ("... the code ABCD-EFGH ...") or the summary line ("... (code ABCD-EFGH)").
pub fn url_and_code(text: &str) -> anyhow::Result<(String, String)> {
    let url = text
        .split_whitespace()
        .find(|word| word.starts_with("http"))
        .context("no URL")?;
    let code = ["the code ", "(code "]
        .iter()
        .find_map(|marker| text.split(marker).nth(1))
        .and_then(|rest| rest.split([' ', ')', '\n', '\r']).next())
        .filter(|code| !code.is_empty())
        .context("no user code")?;
    Ok((url.to_owned(), code.to_owned()))
}

/// Signs in to Keycloak as `user` and presses `consent` for the code `code` shown with `url`.
pub async fn approve_device_login(url: &str, code: &str, user: &keycloak::User, consent: Consent) {
    // The browser stand-in types the code into the plain verification page.
    let page = url.split('?').next().unwrap_or(url);
    Browser::new()
        .complete_device_login(page, code, &user.username, &user.password, consent)
        .await;
}
