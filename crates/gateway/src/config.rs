//! Command-line flags and the validated configuration built from them.
//!
//! Every flag can also be set through a `RENKU_SSH_GATEWAY_*` environment variable. Limits use
//! the names of the matching `sshd_config` settings (MaxAuthTries, LoginGraceTime,
//! ClientAliveInterval, ClientAliveCountMax) so that admins recognise them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Default name of the Secret that holds the gateway's certificate authority.
pub const DEFAULT_CA_SECRET: &str = "renku-ssh-gateway-ca";
/// Port of the SSH sidecar in the session pod.
pub const SIDECAR_PORT: u16 = 2222;
/// Port of the `<session>-ssh` Service in front of the sidecar.
pub const SERVICE_PORT: u16 = 22;

/// Flags of `renku-ssh-gateway`.
#[derive(Debug, Clone, Parser)]
#[command(name = "renku-ssh-gateway", version, about, long_about = None)]
pub struct Args {
    /// Address and port the SSH server listens on.
    #[arg(long, env = "RENKU_SSH_GATEWAY_LISTEN", default_value = "0.0.0.0:2222")]
    pub listen: SocketAddr,

    /// OpenSSH private host key file of the gateway (ed25519 recommended). Give this or
    /// --host-key-secret; every replica must use the same key.
    #[arg(long, env = "RENKU_SSH_GATEWAY_HOST_KEY", value_name = "FILE")]
    pub host_key: Option<PathBuf>,

    /// Secret with the gateway's host key as `namespace/name` (or `name` in the gateway's own
    /// namespace), read from its data key `ssh_host_ed25519_key`.
    #[arg(long, env = "RENKU_SSH_GATEWAY_HOST_KEY_SECRET", value_name = "SECRET")]
    pub host_key_secret: Option<String>,

    /// Secret with the certificate authority that signs second-hop user certificates, as
    /// `namespace/name` or `name` in the gateway's own namespace. Data keys `ca` (OpenSSH
    /// private key) and `ca.pub`.
    #[arg(long, env = "RENKU_SSH_GATEWAY_CA_SECRET", default_value = DEFAULT_CA_SECRET)]
    pub ca_secret: String,

    /// Namespace of the gateway itself, used for Secret names without a namespace. Kubernetes
    /// sets POD_NAMESPACE through the downward API.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Namespace whose sessions the gateway serves, a DNS-1123 label. All namespaces when
    /// unset.
    #[arg(long, env = "RENKU_SSH_GATEWAY_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// How the gateway reaches a session's SSH sidecar: `pod-ip` (the pod IP from Pod status,
    /// port 2222) or `service` (the `<session>-ssh` Service by DNS name, port 22).
    #[arg(long, env = "RENKU_SSH_GATEWAY_UPSTREAM", value_enum, default_value_t = UpstreamMode::PodIp)]
    pub upstream: UpstreamMode,

    /// Port of the sidecar when --upstream is `pod-ip`.
    #[arg(long, env = "RENKU_SSH_GATEWAY_SIDECAR_PORT", default_value_t = SIDECAR_PORT)]
    pub sidecar_port: u16,

    /// DNS suffix of Services when --upstream is `service`.
    #[arg(
        long,
        env = "RENKU_SSH_GATEWAY_CLUSTER_DOMAIN",
        default_value = "svc.cluster.local"
    )]
    pub service_domain: String,

    /// Validity of the user certificates the gateway signs for the second hop, for example
    /// `5m`. Only the login uses the certificate, so a few minutes is enough.
    #[arg(long, env = "RENKU_SSH_GATEWAY_CERTIFICATE_VALIDITY", default_value = "5m",
          value_parser = parse_duration)]
    pub certificate_validity: Duration,

    /// Time allowed to connect and log in to a session's sidecar.
    #[arg(long, env = "RENKU_SSH_GATEWAY_UPSTREAM_TIMEOUT", default_value = "10s",
          value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// Failed authentication attempts allowed per connection (MaxAuthTries).
    #[arg(long, env = "RENKU_SSH_GATEWAY_MAX_AUTH_TRIES", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_auth_tries: u32,

    /// Time allowed to authenticate after connecting (LoginGraceTime; `0` disables it).
    #[arg(long, env = "RENKU_SSH_GATEWAY_LOGIN_GRACE_TIME", default_value = "60s",
          value_parser = parse_duration)]
    pub login_grace_time: Duration,

    /// Interval of keepalive requests sent to a silent client (ClientAliveInterval; `0`
    /// disables them).
    #[arg(long, env = "RENKU_SSH_GATEWAY_CLIENT_ALIVE_INTERVAL", default_value = "30s",
          value_parser = parse_duration)]
    pub client_alive_interval: Duration,

    /// Unanswered keepalive requests after which a connection is closed
    /// (ClientAliveCountMax).
    #[arg(
        long,
        env = "RENKU_SSH_GATEWAY_CLIENT_ALIVE_COUNT_MAX",
        default_value_t = 3
    )]
    pub client_alive_count_max: u32,

    /// Time after which a connection with no traffic at all is closed (`0` disables it).
    #[arg(long, env = "RENKU_SSH_GATEWAY_IDLE_TIMEOUT", default_value = "1h",
          value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Connections one user may have open at once through this replica
    /// (MaxConnectionsPerUser).
    #[arg(long, env = "RENKU_SSH_GATEWAY_MAX_CONNECTIONS_PER_USER", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_user: u32,

    /// Failed logins from one source address within --failed-login-window after which that
    /// address is blocked for a backoff period.
    #[arg(long, env = "RENKU_SSH_GATEWAY_MAX_FAILED_LOGINS_PER_ADDRESS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_failed_logins_per_address: u32,

    /// Failed logins for one SSH user name (a session name) within --failed-login-window
    /// after which that name is blocked for a backoff period.
    #[arg(long, env = "RENKU_SSH_GATEWAY_MAX_FAILED_LOGINS_PER_USER", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_failed_logins_per_user: u32,

    /// Window in which failed logins are counted.
    #[arg(long, env = "RENKU_SSH_GATEWAY_FAILED_LOGIN_WINDOW", default_value = "5m",
          value_parser = parse_duration)]
    pub failed_login_window: Duration,

    /// First backoff period after the failed-login limit is reached; it doubles with each
    /// further failure while blocked, up to --max-login-backoff.
    #[arg(long, env = "RENKU_SSH_GATEWAY_LOGIN_BACKOFF", default_value = "30s",
          value_parser = parse_duration)]
    pub login_backoff: Duration,

    /// Maximum backoff period. It must be at least --login-backoff.
    #[arg(long, env = "RENKU_SSH_GATEWAY_MAX_LOGIN_BACKOFF", default_value = "15m",
          value_parser = parse_duration)]
    pub max_login_backoff: Duration,

    /// Time open connections get to finish after SIGTERM before they are closed with a
    /// message.
    #[arg(long, env = "RENKU_SSH_GATEWAY_SHUTDOWN_GRACE", default_value = "30s",
          value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// OpenID Connect issuer URL for logins without a key (OAuth 2.0 device authorization
    /// grant), for example `https://renku.example.org/auth/realms/Renku`. Unset: only key
    /// logins are offered.
    #[arg(long, env = "RENKU_SSH_GATEWAY_OIDC_ISSUER", value_name = "URL")]
    pub oidc_issuer: Option<String>,

    /// Public client id with the device authorization grant enabled at the issuer.
    #[arg(
        long,
        env = "RENKU_SSH_GATEWAY_DEVICE_CLIENT_ID",
        default_value = "renku-cli"
    )]
    pub device_client_id: String,

    /// Space-separated scopes requested in the device flow.
    #[arg(long, env = "RENKU_SSH_GATEWAY_DEVICE_SCOPE", default_value = "openid")]
    pub device_scope: String,

    /// How long a key offered during an approved device login stays trusted for that user and
    /// session. The access token's own expiry caps it, and the trust ends when the session
    /// stops or hibernates.
    #[arg(long, env = "RENKU_SSH_GATEWAY_DEVICE_APPROVAL_TTL", default_value = "8h",
          value_parser = parse_duration)]
    pub device_approval_ttl: Duration,

    /// Device codes one source address may request within --device-code-window.
    #[arg(long, env = "RENKU_SSH_GATEWAY_MAX_DEVICE_CODES_PER_ADDRESS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_device_codes_per_address: u32,

    /// Device codes that may be requested for one session within --device-code-window.
    #[arg(long, env = "RENKU_SSH_GATEWAY_MAX_DEVICE_CODES_PER_SESSION", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_device_codes_per_session: u32,

    /// Window in which device-code requests are counted.
    #[arg(long, env = "RENKU_SSH_GATEWAY_DEVICE_CODE_WINDOW", default_value = "10m",
          value_parser = parse_duration)]
    pub device_code_window: Duration,

    /// Address of the admin HTTP server (`/livez`, `/readyz`, `/metrics`).
    #[arg(
        long,
        env = "RENKU_SSH_GATEWAY_ADMIN_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_address: SocketAddr,

    /// Log format: `text` or `json`.
    #[arg(long, env = "RENKU_SSH_GATEWAY_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// How the gateway reaches a session's sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpstreamMode {
    /// The pod IP from Pod status, at the sidecar port.
    PodIp,
    /// The `<session>-ssh` Service by DNS name, port 22.
    Service,
}

/// Namespace and name of a Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for SecretName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where the gateway's host key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeySource {
    /// An OpenSSH private key file.
    File(PathBuf),
    /// A Secret's `ssh_host_ed25519_key` data key.
    Secret(SecretName),
}

/// Limits on logins and connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// MaxAuthTries.
    pub max_auth_tries: u32,
    /// LoginGraceTime; `None` for no limit.
    pub login_grace_time: Option<Duration>,
    /// ClientAliveInterval; `None` disables keepalives.
    pub client_alive_interval: Option<Duration>,
    /// ClientAliveCountMax.
    pub client_alive_count_max: u32,
    /// Time without traffic after which a connection is closed; `None` for no limit.
    pub idle_timeout: Option<Duration>,
    /// MaxConnectionsPerUser.
    pub max_connections_per_user: u32,
    /// Failed logins per source address before backoff.
    pub max_failed_logins_per_address: u32,
    /// Failed logins per SSH user name before backoff.
    pub max_failed_logins_per_user: u32,
    /// Window in which failures are counted.
    pub failed_login_window: Duration,
    /// First backoff period.
    pub login_backoff: Duration,
    /// Longest backoff period.
    pub max_login_backoff: Duration,
}

/// Settings of logins through the OAuth 2.0 device authorization grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFlowConfig {
    /// OpenID Connect issuer URL.
    pub issuer: String,
    /// Public client id.
    pub client_id: String,
    /// Requested scopes.
    pub scope: String,
    /// Maximum trust period of an approved key.
    pub approval_ttl: Duration,
    /// Device codes per source address and window.
    pub max_codes_per_address: u32,
    /// Device codes per session and window.
    pub max_codes_per_session: u32,
    /// Window of the device-code counters.
    pub code_window: Duration,
}

/// Validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// SSH listen address.
    pub listen: SocketAddr,
    /// Host key source.
    pub host_key: HostKeySource,
    /// Certificate authority Secret.
    pub ca_secret: SecretName,
    /// Namespace to serve, or `None` for all.
    pub watch_namespace: Option<String>,
    /// How the sidecar is reached.
    pub upstream: UpstreamMode,
    /// Sidecar port for [`UpstreamMode::PodIp`].
    pub sidecar_port: u16,
    /// Service DNS suffix for [`UpstreamMode::Service`].
    pub service_domain: String,
    /// Validity of second-hop certificates.
    pub certificate_validity: Duration,
    /// Time allowed for the second hop to connect and log in.
    pub upstream_timeout: Duration,
    /// Login and connection limits.
    pub limits: Limits,
    /// Grace period on shutdown.
    pub shutdown_grace: Duration,
    /// Device-flow login, when an issuer is configured.
    pub device_flow: Option<DeviceFlowConfig>,
    /// Admin server address.
    pub admin_address: SocketAddr,
    /// Log format.
    pub log_format: admin::LogFormat,
}

/// Invalid flag values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither or both host key flags are set.
    #[error("set exactly one of --host-key FILE or --host-key-secret NAMESPACE/NAME")]
    HostKeySource,
    /// A Secret reference is not `namespace/name` or `name`.
    #[error(
        "invalid {flag} {value:?}: write it as namespace/name or name, for example renku/{example}"
    )]
    SecretName {
        /// Flag name.
        flag: &'static str,
        /// Value given.
        value: String,
        /// Example name.
        example: &'static str,
    },
    /// Certificate validity out of range.
    #[error(
        "invalid --certificate-validity {}: use a value from 1m to 1h",
        format_duration(.0)
    )]
    CertificateValidity(Duration),
    /// The first login backoff is longer than the maximum backoff.
    #[error(
        "invalid --login-backoff {}: it is longer than --max-login-backoff {}; set \
         --login-backoff to at most {} or raise --max-login-backoff",
        format_duration(.backoff),
        format_duration(.max_backoff),
        format_duration(.max_backoff)
    )]
    LoginBackoff {
        /// Value of --login-backoff.
        backoff: Duration,
        /// Value of --max-login-backoff.
        max_backoff: Duration,
    },
    /// The watched namespace is not a valid namespace name.
    #[error(
        "invalid --watch-namespace {0:?}: a namespace name is a DNS-1123 label of 1 to 63 \
         lowercase letters, digits and '-' that starts and ends with a letter or digit, for \
         example renku"
    )]
    WatchNamespace(String),
    /// The issuer URL is not an absolute http(s) URL.
    #[error(
        "invalid --oidc-issuer {0:?}: give the issuer's absolute URL, for example \
         https://renku.example.org/auth/realms/Renku"
    )]
    Issuer(String),
    /// The device client id is empty.
    #[error("--device-client-id is empty: give the public client that has the device grant")]
    DeviceClientId,
    /// Approval TTL out of range.
    #[error(
        "invalid --device-approval-ttl {}: use a value from 1m to 7d",
        format_duration(.0)
    )]
    ApprovalTtl(Duration),
    /// The log format is unknown.
    #[error(transparent)]
    LogFormat(#[from] admin::Error),
}

impl Args {
    /// Validates the flags and builds the configuration.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let host_key = match (self.host_key, self.host_key_secret) {
            (Some(path), None) => HostKeySource::File(path),
            (None, Some(secret)) => HostKeySource::Secret(parse_secret_name(
                &secret,
                &self.namespace,
                "--host-key-secret",
                "renku-ssh-gateway-host-key",
            )?),
            _ => return Err(ConfigError::HostKeySource),
        };
        let ca_secret = parse_secret_name(
            &self.ca_secret,
            &self.namespace,
            "--ca-secret",
            DEFAULT_CA_SECRET,
        )?;
        let watch_namespace = match self
            .watch_namespace
            .filter(|namespace| !namespace.is_empty())
        {
            Some(namespace) if !is_dns_label(&namespace) => {
                return Err(ConfigError::WatchNamespace(namespace));
            }
            namespace => namespace,
        };
        if self.login_backoff > self.max_login_backoff {
            return Err(ConfigError::LoginBackoff {
                backoff: self.login_backoff,
                max_backoff: self.max_login_backoff,
            });
        }
        let minute = Duration::from_secs(60);
        if self.certificate_validity < minute || self.certificate_validity > 60 * minute {
            return Err(ConfigError::CertificateValidity(self.certificate_validity));
        }
        let device_flow = match self.oidc_issuer.filter(|issuer| !issuer.trim().is_empty()) {
            None => None,
            Some(issuer) => {
                let absolute = reqwest::Url::parse(&issuer)
                    .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host());
                if !absolute {
                    return Err(ConfigError::Issuer(issuer));
                }
                if self.device_client_id.trim().is_empty() {
                    return Err(ConfigError::DeviceClientId);
                }
                if self.device_approval_ttl < minute
                    || self.device_approval_ttl > Duration::from_secs(7 * 86_400)
                {
                    return Err(ConfigError::ApprovalTtl(self.device_approval_ttl));
                }
                Some(DeviceFlowConfig {
                    issuer,
                    client_id: self.device_client_id,
                    scope: self.device_scope,
                    approval_ttl: self.device_approval_ttl,
                    max_codes_per_address: self.max_device_codes_per_address,
                    max_codes_per_session: self.max_device_codes_per_session,
                    code_window: self.device_code_window,
                })
            }
        };
        Ok(Config {
            listen: self.listen,
            host_key,
            ca_secret,
            watch_namespace,
            upstream: self.upstream,
            sidecar_port: self.sidecar_port,
            service_domain: self.service_domain,
            certificate_validity: self.certificate_validity,
            upstream_timeout: self.upstream_timeout,
            limits: Limits {
                max_auth_tries: self.max_auth_tries,
                login_grace_time: non_zero(self.login_grace_time),
                client_alive_interval: non_zero(self.client_alive_interval),
                client_alive_count_max: self.client_alive_count_max,
                idle_timeout: non_zero(self.idle_timeout),
                max_connections_per_user: self.max_connections_per_user,
                max_failed_logins_per_address: self.max_failed_logins_per_address,
                max_failed_logins_per_user: self.max_failed_logins_per_user,
                failed_login_window: self.failed_login_window,
                login_backoff: self.login_backoff,
                max_login_backoff: self.max_login_backoff,
            },
            shutdown_grace: self.shutdown_grace,
            device_flow,
            admin_address: self.admin_address,
            log_format: self.log_format.parse()?,
        })
    }
}

fn non_zero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

/// Checks that `value` is a DNS-1123 label, the syntax of namespace names.
fn is_dns_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    let allowed = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit() || *byte == b'-';
    let alphanumeric = |byte: Option<&u8>| byte.is_some_and(|byte| *byte != b'-');
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(allowed)
        && alphanumeric(bytes.first())
        && alphanumeric(bytes.last())
}

fn parse_secret_name(
    value: &str,
    default_namespace: &str,
    flag: &'static str,
    example: &'static str,
) -> Result<SecretName, ConfigError> {
    let invalid = || ConfigError::SecretName {
        flag,
        value: value.to_owned(),
        example,
    };
    let (namespace, name) = match value.split_once('/') {
        Some((namespace, name)) => (namespace, name),
        None => (default_namespace, value),
    };
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 253
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    };
    if !valid(namespace) || !valid(name) {
        return Err(invalid());
    }
    Ok(SecretName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// Parses a duration in the `sshd_config` time format: a number of seconds, or numbers with
/// the units `s`, `m`, `h`, `d` or `w` (`90`, `1m30s`, `1h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("invalid duration {text:?}: use seconds (`90`) or units s, m, h, d, w (`1h30m`)")
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for character in text.chars() {
        if character.is_ascii_digit() {
            digits.push(character);
            continue;
        }
        let unit: u64 = match character.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(invalid()),
        };
        let value: u64 = digits.parse().map_err(|_| invalid())?;
        total = value
            .checked_mul(unit)
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or_else(invalid)?;
        digits.clear();
    }
    if !digits.is_empty() {
        let value: u64 = digits.parse().map_err(|_| invalid())?;
        total = total.checked_add(value).ok_or_else(invalid)?;
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration in the syntax [`parse_duration`] reads, with the units d, h, m and s
/// (`0s`, `2h`, `1h30m`). Sub-second parts are dropped because that syntax has none.
fn format_duration(duration: &Duration) -> String {
    let mut seconds = duration.as_secs();
    if seconds == 0 {
        return "0s".to_owned();
    }
    let mut text = String::new();
    for (unit, unit_seconds) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
        let count = seconds / unit_seconds;
        if count > 0 {
            text.push_str(&format!("{count}{unit}"));
            seconds %= unit_seconds;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["renku-ssh-gateway", "--host-key", "/keys/host"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
            .expect("flags parse")
            .into_config()
    }

    #[test]
    fn defaults_are_safe() {
        let config = parse(&[]).expect("valid config");

        assert_eq!(config.listen.port(), 2222);
        assert_eq!(config.limits.max_auth_tries, 6);
        assert_eq!(
            config.limits.login_grace_time,
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            config.limits.client_alive_interval,
            Some(Duration::from_secs(30))
        );
        assert_eq!(config.certificate_validity, Duration::from_secs(300));
        assert_eq!(config.upstream, UpstreamMode::PodIp);
        assert_eq!(
            config.ca_secret,
            SecretName {
                namespace: "default".into(),
                name: DEFAULT_CA_SECRET.into()
            }
        );
    }

    #[test]
    fn secret_names_take_namespace() {
        let config = parse(&["--ca-secret", "renku/ssh-ca"]).expect("valid config");
        assert_eq!(
            config.ca_secret,
            SecretName {
                namespace: "renku".into(),
                name: "ssh-ca".into()
            }
        );

        let config = parse(&["--ca-secret", "ssh-ca", "--namespace", "gw"]).expect("valid config");
        assert_eq!(
            config.ca_secret,
            SecretName {
                namespace: "gw".into(),
                name: "ssh-ca".into()
            }
        );
    }

    #[test]
    fn bad_secret_name_is_rejected() {
        for value in ["a/b/c", "/x", "x/", "Upper/x"] {
            let error = parse(&["--ca-secret", value]).expect_err(value);
            assert!(error.to_string().contains(value), "{error}");
        }
    }

    #[test]
    fn host_key_needs_one_source() {
        let args = Args::try_parse_from(["renku-ssh-gateway"]).expect("flags parse");
        assert!(matches!(
            args.into_config(),
            Err(ConfigError::HostKeySource)
        ));

        let both = Args::try_parse_from([
            "renku-ssh-gateway",
            "--host-key",
            "/k",
            "--host-key-secret",
            "renku/hk",
        ])
        .expect("flags parse");
        assert!(matches!(
            both.into_config(),
            Err(ConfigError::HostKeySource)
        ));
    }

    #[test]
    fn certificate_validity_is_bounded() {
        assert!(parse(&["--certificate-validity", "30s"]).is_err());
        assert!(parse(&["--certificate-validity", "2h"]).is_err());
        assert!(parse(&["--certificate-validity", "10m"]).is_ok());
    }

    #[test]
    fn duration_errors_use_flag_syntax() {
        let error = parse(&["--certificate-validity", "0"]).expect_err("zero validity");
        assert_eq!(
            error.to_string(),
            "invalid --certificate-validity 0s: use a value from 1m to 1h"
        );

        let error = parse(&["--certificate-validity", "2h"]).expect_err("long validity");
        assert!(
            error.to_string().contains("--certificate-validity 2h:"),
            "{error}"
        );

        let error = parse(&[
            "--oidc-issuer",
            "https://id.example.org/realms/renku",
            "--device-approval-ttl",
            "8d",
        ])
        .expect_err("long approval TTL");
        assert!(
            error.to_string().contains("--device-approval-ttl 8d:"),
            "{error}"
        );
    }

    #[test]
    fn login_backoff_above_max_is_rejected() {
        let error = parse(&["--login-backoff", "30m", "--max-login-backoff", "15m"])
            .expect_err("backoff above max");

        assert!(
            matches!(error, ConfigError::LoginBackoff { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("--login-backoff 30m"), "{message}");
        assert!(message.contains("--max-login-backoff 15m"), "{message}");
        assert!(message.contains("at most 15m"), "{message}");
    }

    #[test]
    fn login_backoff_equal_to_max_is_valid() {
        let config =
            parse(&["--login-backoff", "15m", "--max-login-backoff", "15m"]).expect("valid");

        assert_eq!(config.limits.login_backoff, Duration::from_secs(900));
        assert_eq!(config.limits.max_login_backoff, Duration::from_secs(900));
    }

    #[test]
    fn watch_namespace_must_be_dns_label() {
        let too_long = "a".repeat(64);
        for value in [
            "Bad_NS",
            "-renku",
            "renku-",
            "re.nku",
            "rénku",
            too_long.as_str(),
        ] {
            // The `=` form keeps clap from reading "-renku" as a flag.
            let flag = format!("--watch-namespace={value}");
            let error = parse(&[&flag]).expect_err(value);
            assert!(
                matches!(error, ConfigError::WatchNamespace(_)),
                "{value}: {error:?}"
            );
            assert!(error.to_string().contains(value), "{error}");
        }

        let longest = "a".repeat(63);
        for value in ["renku", "a", "0", "team-1", longest.as_str()] {
            let config = parse(&["--watch-namespace", value]).expect(value);
            assert_eq!(config.watch_namespace.as_deref(), Some(value));
        }

        let config = parse(&["--watch-namespace", ""]).expect("empty means all namespaces");
        assert_eq!(config.watch_namespace, None);
    }

    #[test]
    fn durations_format_in_flag_syntax() {
        for (seconds, text) in [
            (0, "0s"),
            (45, "45s"),
            (90, "1m30s"),
            (7_200, "2h"),
            (5_400, "1h30m"),
            (604_800, "7d"),
            (90_061, "1d1h1m1s"),
        ] {
            let duration = Duration::from_secs(seconds);
            assert_eq!(format_duration(&duration), text);
            assert_eq!(parse_duration(text), Ok(duration), "{text} parses back");
        }
        assert_eq!(format_duration(&Duration::from_millis(1_500)), "1s");
    }

    #[test]
    fn zero_disables_timers() {
        let config =
            parse(&["--login-grace-time", "0", "--client-alive-interval", "0"]).expect("valid");
        assert_eq!(config.limits.login_grace_time, None);
        assert_eq!(config.limits.client_alive_interval, None);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
    }
}
