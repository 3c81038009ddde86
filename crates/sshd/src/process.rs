//! Child processes of sessions: environment, login shell, spawning with or without a pty,
//! signals, and reaping of orphans.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use russh::Sig;
use rustix::process::{Pid, Signal};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tracing::{debug, warn};

use crate::passwd::Account;
use crate::pty::{AsyncPty, PtyRequest};

/// `PATH` for children when the container sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Time between the hang-up of a disconnected session and `SIGKILL`.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Process IDs of children whose `tokio::process::Child` reaps them; the orphan reaper leaves
/// these alone. Spawning holds the lock so that a child cannot exit unlisted.
static TRACKED_CHILDREN: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// Login settings shared by every session of the server.
#[derive(Debug, Clone)]
pub struct LoginContext {
    /// The process user's account.
    pub account: Account,
    /// The container's environment, without this server's own settings.
    pub base_env: Vec<(OsString, OsString)>,
}

impl LoginContext {
    /// Captures the account and the environment of this process.
    pub fn from_process(account: Account) -> Self {
        let base_env = std::env::vars_os()
            .filter(|(name, _)| !name.to_string_lossy().starts_with("RENKU_SSHD_"))
            .collect();
        Self { account, base_env }
    }
}

/// Program, terminal and environment of one session channel.
#[derive(Debug, Default)]
pub struct Launch {
    /// Command for `shell -c`; `None` runs an interactive login shell.
    pub command: Option<String>,
    /// Terminal, when the client requested one.
    pub pty: Option<PtyRequest>,
    /// Variables set on top of the container environment (SSH_*, TERM, LANG, ...).
    pub env: Vec<(String, String)>,
}

/// Standard streams of a spawned child.
pub enum ChildIo {
    /// Terminal master; the child has the slave as its controlling terminal.
    Pty(AsyncPty),
    /// Pipes.
    Pipes {
        /// Child's standard input.
        stdin: ChildStdin,
        /// Child's standard output.
        stdout: ChildStdout,
        /// Child's standard error.
        stderr: ChildStderr,
    },
}

/// A running session child and the process group it leads.
pub struct Spawned {
    /// The child, to wait for.
    pub child: Child,
    /// The child's process group.
    pub group: Arc<ProcessGroup>,
    /// The child's standard streams.
    pub io: ChildIo,
}

/// A process group led by a session child, signalled as a whole.
#[derive(Debug)]
pub struct ProcessGroup {
    pgid: Pid,
    exited: AtomicBool,
}

impl ProcessGroup {
    /// Sends `signal` to every process of the group.
    pub fn signal(&self, signal: Signal) {
        if let Err(error) = rustix::process::kill_process_group(self.pgid, signal) {
            debug!(pgid = self.pgid.as_raw_nonzero().get(), %error, "cannot signal process group");
        }
    }

    /// Records that the leader has exited and been reaped.
    pub fn mark_exited(&self) {
        self.exited.store(true, Ordering::SeqCst);
    }

    /// Hangs up the group like a closed terminal: `SIGHUP` and `SIGCONT` now, then `SIGKILL`
    /// after a grace period if the leader is still running.
    pub fn hang_up(self: &Arc<Self>) {
        if self.exited.load(Ordering::SeqCst) {
            return;
        }
        self.signal(Signal::HUP);
        self.signal(Signal::CONT);
        let group = Arc::clone(self);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(KILL_GRACE).await;
                if !group.exited.load(Ordering::SeqCst) {
                    group.signal(Signal::KILL);
                }
            });
        }
    }
}

/// Builds the child environment: the container's variables, then the login variables, then
/// the per-session ones.
fn build_env(context: &LoginContext, launch: &Launch) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = context.base_env.clone();
    let mut set = |name: &str, value: OsString| {
        env.retain(|(existing, _)| existing != name);
        env.push((OsString::from(name), value));
    };
    let account = &context.account;
    set("USER", account.name.clone().into());
    set("LOGNAME", account.name.clone().into());
    set("HOME", account.home.clone().into_os_string());
    set("SHELL", account.shell.clone().into_os_string());
    let has_path = context.base_env.iter().any(|(name, _)| name == "PATH");
    if !has_path {
        set("PATH", DEFAULT_PATH.into());
    }
    for (name, value) in &launch.env {
        set(name, value.into());
    }
    env
}

/// Returns the shell's file name, for `argv[0]`.
fn shell_name(account: &Account) -> String {
    account
        .shell
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sh".to_owned())
}

/// Starts the child for a session: `shell -c command`, or the shell as a login shell (`argv[0]`
/// of `-sh` form) in a new session with the pty as controlling terminal.
pub fn spawn(context: &LoginContext, launch: Launch) -> io::Result<Spawned> {
    let account = &context.account;
    let mut command = Command::new(&account.shell);
    match &launch.command {
        Some(text) => {
            command.arg0(shell_name(account)).arg("-c").arg(text);
        }
        None => {
            command.arg0(format!("-{}", shell_name(account)));
        }
    }
    command
        .env_clear()
        .envs(build_env(context, &launch))
        .current_dir(&account.home);

    let mut tracked = TRACKED_CHILDREN
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let (child, io) = match &launch.pty {
        Some(request) => {
            let pair = crate::pty::open(request)?;
            command
                .env("TERM", &request.term)
                .env("SSH_TTY", &pair.slave_path);
            command
                .stdin(Stdio::from(pair.slave.try_clone()?))
                .stdout(Stdio::from(pair.slave.try_clone()?))
                .stderr(Stdio::from(pair.slave));
            crate::sys::start_session_with_controlling_tty(&mut command);
            let child = command.spawn()?;
            (child, ChildIo::Pty(AsyncPty::new(pair.master)?))
        }
        None => {
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            let mut child = command.spawn()?;
            let (Some(stdin), Some(stdout), Some(stderr)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                return Err(io::Error::other("child has no standard streams"));
            };
            (
                child,
                ChildIo::Pipes {
                    stdin,
                    stdout,
                    stderr,
                },
            )
        }
    };
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .unwrap_or(0);
    tracked.get_or_insert_with(HashSet::new).insert(pid);
    drop(tracked);

    let pgid = Pid::from_raw(pid).ok_or_else(|| io::Error::other("child has no process id"))?;
    let group = Arc::new(ProcessGroup {
        pgid,
        exited: AtomicBool::new(false),
    });
    Ok(Spawned { child, group, io })
}

/// Waits for a spawned child and removes it from the reaper's exclusion list.
pub async fn wait(child: &mut Child, group: &ProcessGroup) -> io::Result<ExitStatus> {
    let pid = child.id().and_then(|id| i32::try_from(id).ok());
    let status = child.wait().await;
    group.mark_exited();
    if let Some(pid) = pid {
        let mut tracked = TRACKED_CHILDREN
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = tracked.as_mut() {
            set.remove(&pid);
        }
    }
    status
}

/// Exit report of a child, as sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReport {
    /// `exit-status`.
    Status(u32),
    /// `exit-signal`.
    Signal {
        /// Signal name as SSH spells it (without `SIG`).
        signal: String,
        /// Whether a core dump was written.
        core_dumped: bool,
    },
}

/// Converts a wait status into the report sent to the client.
pub fn exit_report(status: ExitStatus) -> ExitReport {
    if let Some(code) = status.code() {
        return ExitReport::Status(u32::try_from(code).unwrap_or(255));
    }
    match status.signal() {
        Some(number) => ExitReport::Signal {
            signal: signal_name(number).to_owned(),
            core_dumped: status.core_dumped(),
        },
        None => ExitReport::Status(255),
    }
}

/// Signal names of RFC 4254 section 6.10, plus USR2.
const SIGNAL_NAMES: &[(Signal, &str)] = &[
    (Signal::ABORT, "ABRT"),
    (Signal::ALARM, "ALRM"),
    (Signal::FPE, "FPE"),
    (Signal::HUP, "HUP"),
    (Signal::ILL, "ILL"),
    (Signal::INT, "INT"),
    (Signal::KILL, "KILL"),
    (Signal::PIPE, "PIPE"),
    (Signal::QUIT, "QUIT"),
    (Signal::SEGV, "SEGV"),
    (Signal::TERM, "TERM"),
    (Signal::USR1, "USR1"),
    (Signal::USR2, "USR2"),
];

fn signal_name(number: i32) -> &'static str {
    SIGNAL_NAMES
        .iter()
        .find(|(signal, _)| signal.as_raw() == number)
        .map(|(_, name)| *name)
        .unwrap_or("UNKNOWN")
}

/// Converts a signal name into russh's type for `exit-signal`.
pub fn ssh_signal(name: &str) -> Sig {
    match name {
        "ABRT" => Sig::ABRT,
        "ALRM" => Sig::ALRM,
        "FPE" => Sig::FPE,
        "HUP" => Sig::HUP,
        "ILL" => Sig::ILL,
        "INT" => Sig::INT,
        "KILL" => Sig::KILL,
        "PIPE" => Sig::PIPE,
        "QUIT" => Sig::QUIT,
        "SEGV" => Sig::SEGV,
        "TERM" => Sig::TERM,
        "USR1" => Sig::USR1,
        other => Sig::Custom(other.to_owned()),
    }
}

/// Maps a `signal` request to a Unix signal; RFC 4254 names plus a few common extras.
pub fn unix_signal(signal: &Sig) -> Option<Signal> {
    Some(match signal {
        Sig::ABRT => Signal::ABORT,
        Sig::ALRM => Signal::ALARM,
        Sig::FPE => Signal::FPE,
        Sig::HUP => Signal::HUP,
        Sig::ILL => Signal::ILL,
        Sig::INT => Signal::INT,
        Sig::KILL => Signal::KILL,
        Sig::PIPE => Signal::PIPE,
        Sig::QUIT => Signal::QUIT,
        Sig::SEGV => Signal::SEGV,
        Sig::TERM => Signal::TERM,
        Sig::USR1 => Signal::USR1,
        Sig::Custom(name) => match name.as_str() {
            "USR2" => Signal::USR2,
            "CONT" => Signal::CONT,
            "STOP" => Signal::STOP,
            "TSTP" => Signal::TSTP,
            "WINCH" => Signal::WINCH,
            _ => return None,
        },
    })
}

/// Reaps zombies that are this process's children but no session's `Child` (orphans
/// re-parented to us as PID 1 or as child subreaper). Runs on every `SIGCHLD`.
pub async fn reap_orphans() {
    if let Err(error) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        warn!(%error, "cannot become child subreaper; orphans of sessions are reaped by PID 1");
    }
    let mut signals = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(signals) => signals,
        Err(error) => {
            warn!(%error, "cannot watch SIGCHLD; orphaned processes will not be reaped");
            return;
        }
    };
    let mut interval = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = signals.recv() => {}
            _ = interval.tick() => {}
        }
        reap_untracked_zombies();
    }
}

fn reap_untracked_zombies() {
    let own_pid = rustix::process::getpid().as_raw_nonzero().get();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let tracked = TRACKED_CHILDREN
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if tracked.as_ref().is_some_and(|set| set.contains(&pid)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, then parent PID.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(state), Some(parent)) = (fields.next(), fields.next()) else {
            continue;
        };
        if state != "Z" || parent.parse::<i32>().ok() != Some(own_pid) {
            continue;
        }
        if let Some(pid) = Pid::from_raw(pid) {
            let reaped = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
            debug!(
                pid = pid.as_raw_nonzero().get(),
                ?reaped,
                "reaped orphaned process"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn context() -> LoginContext {
        LoginContext {
            account: Account {
                name: "jovyan".into(),
                home: PathBuf::from("/tmp"),
                shell: PathBuf::from("/bin/sh"),
            },
            base_env: vec![
                ("PATH".into(), "/opt/conda/bin:/usr/bin:/bin".into()),
                ("USER".into(), "root".into()),
                ("KEEP".into(), "1".into()),
            ],
        }
    }

    fn lookup<'a>(env: &'a [(OsString, OsString)], name: &str) -> Option<&'a OsString> {
        env.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    #[test]
    fn environment_keeps_container_path() {
        let launch = Launch {
            env: vec![("TERM".into(), "xterm".into())],
            ..Launch::default()
        };
        let env = build_env(&context(), &launch);
        assert_eq!(
            lookup(&env, "PATH"),
            Some(&OsString::from("/opt/conda/bin:/usr/bin:/bin"))
        );
        assert_eq!(lookup(&env, "USER"), Some(&OsString::from("jovyan")));
        assert_eq!(lookup(&env, "LOGNAME"), Some(&OsString::from("jovyan")));
        assert_eq!(lookup(&env, "HOME"), Some(&OsString::from("/tmp")));
        assert_eq!(lookup(&env, "SHELL"), Some(&OsString::from("/bin/sh")));
        assert_eq!(lookup(&env, "TERM"), Some(&OsString::from("xterm")));
        assert_eq!(lookup(&env, "KEEP"), Some(&OsString::from("1")));
        assert_eq!(env.iter().filter(|(key, _)| key == "USER").count(), 1);
    }

    #[test]
    fn environment_defaults_path() {
        let mut context = context();
        context.base_env.clear();
        let env = build_env(&context, &Launch::default());
        assert_eq!(lookup(&env, "PATH"), Some(&OsString::from(DEFAULT_PATH)));
    }

    #[test]
    fn exit_reports() {
        assert_eq!(
            exit_report(ExitStatus::from_raw(7 << 8)),
            ExitReport::Status(7)
        );
        assert_eq!(
            exit_report(ExitStatus::from_raw(9)),
            ExitReport::Signal {
                signal: "KILL".to_owned(),
                core_dumped: false
            }
        );
    }

    #[test]
    fn signal_names_map_both_ways() {
        assert_eq!(unix_signal(&Sig::INT), Some(Signal::INT));
        assert_eq!(unix_signal(&Sig::Custom("USR2".into())), Some(Signal::USR2));
        assert_eq!(unix_signal(&Sig::Custom("BOGUS".into())), None);
    }

    #[tokio::test]
    async fn spawn_runs_command_through_shell() {
        let launch = Launch {
            command: Some("exit 7".into()),
            ..Launch::default()
        };
        let mut spawned = spawn(&context(), launch).expect("spawn");
        let status = wait(&mut spawned.child, &spawned.group)
            .await
            .expect("wait");
        assert_eq!(exit_report(status), ExitReport::Status(7));
    }
}
