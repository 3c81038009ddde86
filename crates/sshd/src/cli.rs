//! Command-line flags. Every flag can also be set through a `RENKU_SSHD_*` environment variable,
//! and the names of the limits follow `sshd_config` (MaxAuthTries, LoginGraceTime, ...).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// SSH server for a Renku session pod: public-key and certificate logins only, every login runs
/// as the user this process runs as.
#[derive(Debug, Parser)]
#[command(name = "renku-sshd", version, about)]
pub struct Args {
    /// Address and port to listen on.
    #[arg(long, env = "RENKU_SSHD_LISTEN", default_value = "0.0.0.0:2222")]
    pub listen: SocketAddr,

    /// OpenSSH private host key (ed25519 recommended). The server waits for the file to appear.
    #[arg(long, env = "RENKU_SSHD_HOST_KEY", value_name = "FILE")]
    pub host_key: PathBuf,

    /// authorized_keys file, read afresh on every authentication attempt.
    #[arg(long, env = "RENKU_SSHD_AUTHORIZED_KEYS", value_name = "FILE")]
    pub authorized_keys: Option<PathBuf>,

    /// File of CA public keys whose user certificates are accepted (like TrustedUserCAKeys),
    /// read afresh on every authentication attempt.
    #[arg(
        long,
        env = "RENKU_SSHD_TRUSTED_USER_CA_KEYS",
        value_name = "FILE",
        requires = "principal"
    )]
    pub trusted_user_ca_keys: Option<PathBuf>,

    /// Principal that a user certificate must list to be accepted.
    #[arg(long, env = "RENKU_SSHD_PRINCIPAL", value_name = "NAME")]
    pub principal: Option<String>,

    /// Log output format.
    #[arg(long, env = "RENKU_SSHD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in tracing-subscriber's EnvFilter syntax, for example `info` or
    /// `renku_sshd=debug`.
    #[arg(long, env = "RENKU_SSHD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Failed authentication attempts allowed per connection (MaxAuthTries).
    #[arg(long, env = "RENKU_SSHD_MAX_AUTH_TRIES", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_auth_tries: u32,

    /// Time allowed to authenticate after connecting, for example `60`, `90s` or `2m`
    /// (LoginGraceTime; `0` disables the limit).
    #[arg(long, env = "RENKU_SSHD_LOGIN_GRACE_TIME", default_value = "60s",
          value_parser = parse_duration)]
    pub login_grace_time: Duration,

    /// Session channels (shell, exec, sftp) allowed open at once per connection (MaxSessions).
    #[arg(long, env = "RENKU_SSHD_MAX_SESSIONS", default_value_t = 10)]
    pub max_sessions: u32,

    /// Interval of keepalive requests sent to a silent client (ClientAliveInterval; `0`
    /// disables them).
    #[arg(long, env = "RENKU_SSHD_CLIENT_ALIVE_INTERVAL", default_value = "30s",
          value_parser = parse_duration)]
    pub client_alive_interval: Duration,

    /// Unanswered keepalive requests after which the connection is closed
    /// (ClientAliveCountMax).
    #[arg(long, env = "RENKU_SSHD_CLIENT_ALIVE_COUNT_MAX", default_value_t = 3)]
    pub client_alive_count_max: u32,

    /// Time after which a connection with no open channel is closed (UnusedConnectionTimeout;
    /// `0` disables the limit). Port-forwarding listeners do not count as open channels.
    #[arg(long, env = "RENKU_SSHD_UNUSED_CONNECTION_TIMEOUT", default_value = "1h",
          value_parser = parse_duration)]
    pub unused_connection_timeout: Duration,

    /// TCP forwarding allowed: `yes`, `no`, `local` (ssh -L) or `remote` (ssh -R)
    /// (AllowTcpForwarding).
    #[arg(long, env = "RENKU_SSHD_ALLOW_TCP_FORWARDING", value_enum,
          default_value_t = TcpForwarding::Yes)]
    pub allow_tcp_forwarding: TcpForwarding,

    /// Whether ssh-agent forwarding is allowed (AllowAgentForwarding).
    #[arg(long, env = "RENKU_SSHD_ALLOW_AGENT_FORWARDING", value_enum,
          default_value_t = YesNo::Yes)]
    pub allow_agent_forwarding: YesNo,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Values of the AllowTcpForwarding setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TcpForwarding {
    /// Local (`direct-tcpip`) and remote (`tcpip-forward`) forwarding.
    Yes,
    /// No TCP forwarding.
    No,
    /// Only local forwarding (ssh -L).
    Local,
    /// Only remote forwarding (ssh -R).
    Remote,
}

impl TcpForwarding {
    /// Returns whether `direct-tcpip` channels (ssh -L) are allowed.
    pub fn allows_local(self) -> bool {
        matches!(self, Self::Yes | Self::Local)
    }

    /// Returns whether `tcpip-forward` requests (ssh -R) are allowed.
    pub fn allows_remote(self) -> bool {
        matches!(self, Self::Yes | Self::Remote)
    }
}

/// A yes/no setting, spelled as in `sshd_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum YesNo {
    /// Enabled.
    Yes,
    /// Disabled.
    No,
}

/// Parses a duration in the `sshd_config` time format: a number of seconds, or a sequence of
/// numbers with the units `s`, `m`, `h`, `d` or `w` (`90`, `1m30s`, `1h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("invalid duration {text:?}: use seconds (`90`) or units s, m, h, d, w (`1h30m`)")
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for character in text.chars() {
        if character.is_ascii_digit() {
            number.push(character);
            continue;
        }
        let unit = match character.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(invalid()),
        };
        let value: u64 = number.parse().map_err(|_| invalid())?;
        total = value
            .checked_mul(unit)
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or_else(invalid)?;
        number.clear();
    }
    if !number.is_empty() {
        let value: u64 = number.parse().map_err(|_| invalid())?;
        total = total.checked_add(value).ok_or_else(invalid)?;
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_plain_seconds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn duration_with_units() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn duration_rejects_garbage() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("-5").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
    }

    #[test]
    fn args_require_principal_with_ca() {
        let result = Args::try_parse_from([
            "renku-sshd",
            "--host-key",
            "/k",
            "--trusted-user-ca-keys",
            "/ca",
        ]);
        assert!(result.is_err());
    }

    #[test]
    fn args_defaults() {
        let args = Args::try_parse_from(["renku-sshd", "--host-key", "/k"]).expect("parse");
        assert_eq!(args.listen.port(), 2222);
        assert_eq!(args.max_auth_tries, 6);
        assert_eq!(args.max_sessions, 10);
        assert_eq!(args.login_grace_time, Duration::from_secs(60));
        assert_eq!(args.unused_connection_timeout, Duration::from_secs(3600));
        assert_eq!(args.client_alive_interval, Duration::from_secs(30));
    }
}
