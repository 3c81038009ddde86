//! renku-sshd: the SSH server that runs as a sidecar in Renku session pods.

mod agent;
mod auth;
mod cli;
mod connection;
mod forward;
mod keys;
mod passwd;
mod process;
mod pty;
mod resolve;
mod server;
mod session;
mod sftp;
mod sys;

use std::borrow::Cow;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use russh::keys::{HashAlg, PrivateKey};
use russh::{MethodKind, MethodSet, Preferred, SshId, cipher};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::auth::AuthPolicy;
use crate::cli::{Args, LogFormat, YesNo};
use crate::process::LoginContext;
use crate::server::Settings;

/// Interval between checks for a host key file that does not exist yet.
const HOST_KEY_POLL: Duration = Duration::from_secs(2);

/// Ciphers in OpenSSH's default order, limited to those russh implements.
const CIPHERS: &[cipher::Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_128_CTR,
    cipher::AES_192_CTR,
    cipher::AES_256_CTR,
    cipher::AES_128_GCM,
    cipher::AES_256_GCM,
];

/// Startup failures, reported before exiting with status 1.
#[derive(Debug, thiserror::Error)]
enum StartupError {
    #[error(
        "invalid --log-level {value:?}: {reason}; use a level such as `info` or `renku_sshd=debug`"
    )]
    LogLevel { value: String, reason: String },
    #[error(
        "no way to log in: set --authorized-keys (RENKU_SSHD_AUTHORIZED_KEYS) and/or \
         --trusted-user-ca-keys with --principal"
    )]
    NoAuthenticationSource,
    #[error(
        "cannot read host key {path}: {reason}; give an OpenSSH private key without passphrase"
    )]
    HostKey { path: String, reason: String },
    #[error("cannot listen on {address}: {error}; choose a free port with --listen")]
    Listen {
        address: String,
        error: std::io::Error,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = init_logging(&args) {
        eprintln!("renku-sshd: {error}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(%error, "renku-sshd failed");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(args: &Args) -> Result<(), StartupError> {
    let filter = EnvFilter::try_new(&args.log_level).map_err(|error| StartupError::LogLevel {
        value: args.log_level.clone(),
        reason: error.to_string(),
    })?;
    // Colors only on a terminal (and not under NO_COLOR): in a pod, stderr is a log file.
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !no_color;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    Ok(())
}

async fn run(args: Args) -> Result<(), StartupError> {
    if args.authorized_keys.is_none() && args.trusted_user_ca_keys.is_none() {
        return Err(StartupError::NoAuthenticationSource);
    }
    let (shutdown_sender, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_termination().await;
        info!("shutdown requested");
        let _ = shutdown_sender.send(true);
    });

    let Some(host_key) = wait_for_host_key(&args.host_key, shutdown.clone()).await? else {
        return Ok(());
    };
    info!(
        fingerprint = %host_key.public_key().fingerprint(HashAlg::Sha256),
        algorithm = %host_key.algorithm(),
        "host key loaded"
    );

    let account = passwd::current_account();
    info!(
        user = account.name,
        home = %account.home.display(),
        shell = %account.shell.display(),
        "sessions run as the process user"
    );
    let settings = Arc::new(Settings {
        policy: AuthPolicy {
            authorized_keys: args.authorized_keys.clone(),
            trusted_user_ca_keys: args.trusted_user_ca_keys.clone(),
            principal: args.principal.clone(),
        },
        login: LoginContext::from_process(account),
        max_sessions: args.max_sessions as usize,
        login_grace_time: non_zero(args.login_grace_time),
        unused_connection_timeout: non_zero(args.unused_connection_timeout),
        tcp_forwarding: args.allow_tcp_forwarding,
        agent_forwarding: args.allow_agent_forwarding == YesNo::Yes,
        resolver: Arc::default(),
    });
    let config = Arc::new(ssh_config(&args, host_key));

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|error| StartupError::Listen {
            address: args.listen.to_string(),
            error,
        })?;
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(address, "listening");

    tokio::spawn(process::reap_orphans());
    server::serve(listener, config, settings, shutdown).await;
    info!("stopped");
    Ok(())
}

fn non_zero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

fn ssh_config(args: &Args, host_key: PrivateKey) -> russh::server::Config {
    let mut preferred = Preferred::DEFAULT.clone();
    preferred.cipher = Cow::Borrowed(CIPHERS);
    russh::server::Config {
        server_id: SshId::Standard(Cow::Owned(format!(
            "SSH-2.0-renku-sshd_{}",
            env!("CARGO_PKG_VERSION")
        ))),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // Public-key rejections reveal nothing a timing attack could use.
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        max_auth_attempts: args.max_auth_tries as usize,
        // The supervisor in server.rs applies UnusedConnectionTimeout and LoginGraceTime.
        inactivity_timeout: None,
        keepalive_interval: non_zero(args.client_alive_interval),
        keepalive_max: args.client_alive_count_max as usize,
        nodelay: true,
        preferred,
        ..Default::default()
    }
}

/// Loads the host key, waiting for the file to appear (the Secret is mounted as optional).
/// Returns `None` when shutdown is requested first.
async fn wait_for_host_key(
    path: &Path,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<PrivateKey>, StartupError> {
    let mut warned = false;
    loop {
        if path.exists() {
            return russh::keys::load_secret_key(path, None)
                .map(Some)
                .map_err(|error| StartupError::HostKey {
                    path: path.display().to_string(),
                    reason: error.to_string(),
                });
        }
        if !warned {
            warn!(path = %path.display(), "host key file does not exist yet; waiting for it");
            warned = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(HOST_KEY_POLL) => {}
            _ = shutdown.changed() => return Ok(None),
        }
    }
}

async fn wait_for_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot watch SIGTERM and SIGINT; graceful shutdown is unavailable");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
