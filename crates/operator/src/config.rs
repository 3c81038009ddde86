//! Command-line flags (each also read from a `RENKU_SSH_*` environment variable) and the
//! validated configuration built from them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use authkeys::KeyPolicy;
use clap::{Parser, ValueEnum};
use oidc::Secret;
use url::{Host, Url};

use crate::error::{Categorized, ErrorCategory};

/// Flags of `renku-ssh-operator`.
#[derive(Debug, Clone, Parser)]
#[command(name = "renku-ssh-operator", version, about, long_about = None)]
pub struct Args {
    /// Namespace whose sessions and SSHAccess objects the operator manages; all namespaces when
    /// unset.
    #[arg(long, env = "RENKU_SSH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Policy that selects the AmaltheaSessions that get an SSHAccess: `all`, `annotated` (those with the annotation
    /// `ssh.renku.io/enabled: "true"`) or `explicit` (none; SSHAccess objects are created by
    /// hand).
    #[arg(long, env = "RENKU_SSH_POLICY", value_enum, default_value_t = SshPolicy::Annotated)]
    pub ssh_policy: SshPolicy,

    /// Public host name of the SSH gateway, shown in `status.endpoint` and `status.command`.
    #[arg(long, env = "RENKU_SSH_GATEWAY_HOST")]
    pub gateway_host: String,

    /// Public TCP port of the SSH gateway, from 1 to 65535.
    #[arg(long, env = "RENKU_SSH_GATEWAY_PORT", default_value_t = 22)]
    pub gateway_port: u16,

    /// Labels of the gateway pods, as `key=value[,key=value...]`; each session's NetworkPolicy
    /// admits SSH traffic only from pods with these labels.
    #[arg(
        long,
        env = "RENKU_SSH_GATEWAY_POD_SELECTOR",
        default_value = "app.kubernetes.io/name=renku-ssh-gateway"
    )]
    pub gateway_pod_selector: String,

    /// Namespace of the gateway pods; when unset the NetworkPolicy admits gateway pods from the
    /// session's own namespace only.
    #[arg(long, env = "RENKU_SSH_GATEWAY_NAMESPACE")]
    pub gateway_namespace: Option<String>,

    /// Secret with the gateway's certificate authority, as `namespace/name`. The operator
    /// creates it with a new Ed25519 key when it is missing and never replaces an existing one.
    #[arg(long, env = "RENKU_SSH_CA_SECRET")]
    pub ca_secret: String,

    /// Accepted key types, comma-separated; defaults to every type the operator supports.
    #[arg(long, env = "RENKU_SSH_ALLOWED_KEY_TYPES", value_delimiter = ',')]
    pub allowed_key_types: Vec<String>,

    /// Minimum RSA key size in bits.
    #[arg(long, env = "RENKU_SSH_MIN_RSA_BITS", default_value_t = authkeys::DEFAULT_MIN_RSA_BITS)]
    pub min_rsa_bits: u32,

    /// Maximum number of distinct keys per SSHAccess, across all its sources.
    #[arg(long, env = "RENKU_SSH_MAX_KEYS_PER_USER", default_value_t = authkeys::DEFAULT_MAX_KEYS)]
    pub max_keys_per_user: usize,

    /// Maximum length of one key line in bytes.
    #[arg(
        long,
        env = "RENKU_SSH_MAX_KEY_LINE_LENGTH",
        default_value_t = authkeys::DEFAULT_MAX_LINE_LENGTH
    )]
    pub max_key_line_length: usize,

    /// URL of a user's keys in the user-preferences API, with `{user}` where the user's
    /// subject goes, for example `https://renku.example.org/api/data/users/{user}/ssh_keys`.
    /// Without it, `keysFrom: userPreferences` sources report that the source is not configured.
    #[arg(long, env = "RENKU_SSH_USER_PREFERENCES_URL")]
    pub user_preferences_url: Option<String>,

    /// OpenID Connect issuer whose token endpoint issues the operator's access token for the
    /// user-preferences API (client credentials grant). Set this or
    /// `--user-preferences-token-endpoint`.
    #[arg(long, env = "RENKU_SSH_USER_PREFERENCES_ISSUER")]
    pub user_preferences_issuer: Option<String>,

    /// OAuth 2.0 token endpoint for the client credentials grant, used instead of discovery
    /// through `--user-preferences-issuer`.
    #[arg(long, env = "RENKU_SSH_USER_PREFERENCES_TOKEN_ENDPOINT")]
    pub user_preferences_token_endpoint: Option<String>,

    /// OAuth 2.0 client id of the operator.
    #[arg(long, env = "RENKU_SSH_USER_PREFERENCES_CLIENT_ID")]
    pub user_preferences_client_id: Option<String>,

    /// File with the OAuth 2.0 client secret of the operator, for example a mounted Secret.
    #[arg(long, env = "RENKU_SSH_USER_PREFERENCES_CLIENT_SECRET_FILE")]
    pub user_preferences_client_secret_file: Option<PathBuf>,

    /// How often each user's keys are fetched from the user-preferences API, for example `60s`.
    #[arg(
        long,
        env = "RENKU_SSH_USER_PREFERENCES_POLL_INTERVAL",
        default_value = "60s",
        value_parser = humantime::parse_duration
    )]
    pub user_preferences_poll_interval: Duration,

    /// Timeout of one request to the user-preferences API or the token endpoint.
    #[arg(
        long,
        env = "RENKU_SSH_USER_PREFERENCES_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub user_preferences_timeout: Duration,

    /// File with the bearer token that `POST /refresh/users/{user}` on the admin server
    /// requires; without it the route is not served.
    #[arg(long, env = "RENKU_SSH_REFRESH_TOKEN_FILE")]
    pub refresh_token_file: Option<PathBuf>,

    /// Address of the admin HTTP server (`/livez`, `/readyz`, `/metrics`, `/refresh/users/*`).
    #[arg(long, env = "RENKU_SSH_ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub admin_address: SocketAddr,

    /// Log line format: `text` or `json`.
    #[arg(long, env = "RENKU_SSH_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Namespace of the leader-election Lease; defaults to `$POD_NAMESPACE`, else the client's
    /// default namespace.
    #[arg(long, env = "RENKU_SSH_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "RENKU_SSH_LEASE_NAME",
        default_value = "renku-ssh-operator"
    )]
    pub lease_name: String,

    /// Identity written to the Lease; defaults to `$POD_NAME`. Without it, the host name gets a
    /// random suffix (`-` and 8 hex digits), so two operators on one machine differ.
    #[arg(long, env = "RENKU_SSH_LEASE_IDENTITY")]
    pub lease_identity: Option<String>,

    /// How long a Lease stays valid without renewal before another replica may take it.
    #[arg(
        long,
        env = "RENKU_SSH_LEASE_DURATION",
        default_value = "15s",
        value_parser = humantime::parse_duration
    )]
    pub lease_duration: Duration,

    /// How long the leader keeps trying to renew before it gives up leadership and exits.
    #[arg(
        long,
        env = "RENKU_SSH_LEASE_RENEW_DEADLINE",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub lease_renew_deadline: Duration,

    /// Interval between attempts to acquire or renew the Lease.
    #[arg(
        long,
        env = "RENKU_SSH_LEASE_RETRY_PERIOD",
        default_value = "2s",
        value_parser = humantime::parse_duration
    )]
    pub lease_retry_period: Duration,

    /// Maximum number of objects each controller reconciles at the same time.
    #[arg(long, env = "RENKU_SSH_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
}

/// Policy that selects the sessions that get an SSHAccess from the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SshPolicy {
    /// Every AmaltheaSession.
    All,
    /// Sessions with the annotation `ssh.renku.io/enabled: "true"`.
    Annotated,
    /// None: SSHAccess objects are created by hand, and the operator removes the ones it made.
    Explicit,
}

/// Validated configuration of the operator.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace to manage, or `None` for all namespaces.
    pub namespace: Option<String>,
    /// Policy that selects the sessions that get an SSHAccess.
    pub ssh_policy: SshPolicy,
    /// The SSH gateway: public address and pod selector.
    pub gateway: Gateway,
    /// Location of the certificate authority Secret.
    pub ca_secret: SecretName,
    /// Rules every public key must pass.
    pub key_policy: KeyPolicy,
    /// The user-preferences key source, when configured.
    pub user_preferences: Option<UserPreferencesConfig>,
    /// Bearer token of the refresh route, when it is served.
    pub refresh_token: Option<Secret>,
    /// Address of the admin HTTP server.
    pub admin_address: SocketAddr,
    /// Leader election.
    pub leader: LeaderConfig,
    /// Maximum concurrent reconciles per controller.
    pub concurrency: u16,
}

/// The SSH gateway, as users and session pods see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// Public host name.
    pub host: String,
    /// Public TCP port.
    pub port: u16,
    /// Labels of the gateway pods.
    pub pod_selector: BTreeMap<String, String>,
    /// Namespace of the gateway pods, or `None` for the session's namespace.
    pub namespace: Option<String>,
}

impl Gateway {
    /// Returns `host:port`, with brackets around an IPv6 address.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Returns the command that opens a shell in `session`, with `-p` only for a port other
    /// than 22.
    pub fn command(&self, session: &str) -> String {
        if self.port == 22 {
            format!("ssh {session}@{}", self.host)
        } else {
            format!("ssh -p {} {session}@{}", self.port, self.host)
        }
    }
}

/// A namespaced object name, written `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretName {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
}

impl std::fmt::Display for SecretName {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}/{}", self.namespace, self.name)
    }
}

/// Leader election through a `coordination.k8s.io` Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Namespace of the Lease, or `None` for the client's default namespace.
    pub namespace: Option<String>,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Validity of the Lease without renewal.
    pub lease_duration: Duration,
    /// How long renewal may fail before leadership is given up.
    pub renew_deadline: Duration,
    /// Interval between acquire and renew attempts.
    pub retry_period: Duration,
}

/// The user-preferences API as a key source.
#[derive(Debug, Clone)]
pub struct UserPreferencesConfig {
    /// URL of one user's keys.
    pub url: UrlTemplate,
    /// Source of the operator's access token.
    pub token: TokenConfig,
    /// Interval between fetches of one user's keys.
    pub poll_interval: Duration,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
}

/// OAuth 2.0 client credentials of the operator.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// Token endpoint, or the issuer whose discovery document names it.
    pub endpoint: TokenEndpoint,
    /// Client id.
    pub client_id: String,
    /// Client secret, redacted in `Debug` output.
    pub client_secret: Secret,
}

/// Location of the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenEndpoint {
    /// Through OpenID Connect discovery of this issuer.
    Issuer(String),
    /// This token endpoint URL.
    Url(Url),
}

/// A URL with a `{user}` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate(String);

/// Placeholder in [`UrlTemplate`] replaced by the percent-encoded user subject.
pub const USER_PLACEHOLDER: &str = "{user}";

impl UrlTemplate {
    /// Checks that `template` contains `{user}` and yields an https URL (or http on a
    /// loopback address) for any user.
    pub fn parse(template: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            flag: "--user-preferences-url",
            value: template.to_owned(),
            reason: reason.to_owned(),
        };
        if !template.contains(USER_PLACEHOLDER) {
            return Err(invalid(
                "it has no {user} placeholder for the user's subject",
            ));
        }
        let sample = template.replace(USER_PLACEHOLDER, "user");
        let url = Url::parse(&sample).map_err(|error| invalid(&error.to_string()))?;
        check_transport(&url).map_err(|reason| invalid(&reason))?;
        Ok(Self(template.to_owned()))
    }

    /// Returns the URL for `user`, percent-encoding every byte outside the URL's unreserved
    /// characters so that a subject can never add a path segment or a query.
    pub fn for_user(&self, user: &str) -> Result<Url, url::ParseError> {
        Url::parse(&self.0.replace(USER_PLACEHOLDER, &percent_encode(user)))
    }

    /// Returns the template as configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Accepts https, and plain http only on loopback, where tests and local development run.
fn check_transport(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err("plain http is allowed only on loopback addresses; use https".to_owned()),
        other => Err(format!("scheme {other:?} is not http or https")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(address)) => address.is_loopback(),
        Some(Host::Ipv6(address)) => address.is_loopback(),
        Some(Host::Domain(domain)) => domain == "localhost",
        None => false,
    }
}

/// An invalid flag value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--ca-secret` is not `namespace/name`.
    #[error("invalid --ca-secret {0:?}: write it as namespace/name, for example renku/ssh-ca")]
    InvalidSecretName(String),
    /// `--gateway-pod-selector` is not a list of `key=value` pairs.
    #[error(
        "invalid --gateway-pod-selector {value:?}: {reason}; write it as key=value[,key=value], \
         for example app.kubernetes.io/name=renku-ssh-gateway"
    )]
    InvalidSelector {
        /// The rejected value.
        value: String,
        /// Reason the value is invalid.
        reason: String,
    },
    /// `--gateway-host` is empty or has a scheme, path or whitespace.
    #[error(
        "invalid --gateway-host {0:?}: give the bare host name users connect to, for example \
         ssh.renku.example.org"
    )]
    InvalidGatewayHost(String),
    /// `--gateway-port` is 0.
    #[error(
        "invalid --gateway-port {0}: give the public TCP port users connect to, from 1 to 65535, \
         for example 22"
    )]
    InvalidGatewayPort(u16),
    /// The key policy flags do not form a valid policy.
    #[error("invalid key policy: {0}")]
    KeyPolicy(#[from] authkeys::PolicyError),
    /// `--max-keys-per-user` exceeds what `status.acceptedKeys` can list.
    #[error(
        "--max-keys-per-user is {0}, over the {max} keys status.acceptedKeys can list: set at \
         most {max}",
        max = api::ssh_access::MAX_ACCEPTED_KEYS
    )]
    TooManyKeysPerUser(usize),
    /// A URL flag is invalid.
    #[error("invalid {flag} {value:?}: {reason}")]
    InvalidUrl {
        /// The flag.
        flag: &'static str,
        /// The rejected value.
        value: String,
        /// Reason the value is invalid.
        reason: String,
    },
    /// A user-preferences flag is set without the others it needs.
    #[error("{0}")]
    IncompleteUserPreferences(String),
    /// A secret file cannot be read.
    #[error("failed to read {flag} {path}: {reason}")]
    SecretFile {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Error message of the failed read.
        reason: String,
    },
    /// No leader-election identity could be found.
    #[error(
        "cannot determine the leader-election identity: set --lease-identity or POD_NAME, or \
         make the host name readable"
    )]
    MissingIdentity,
    /// The lease timings are inconsistent.
    #[error(
        "invalid lease timing: --lease-duration ({duration:?}) must exceed \
         --lease-renew-deadline ({deadline:?}), which must exceed --lease-retry-period \
         ({retry:?})"
    )]
    LeaseTiming {
        /// Lease duration.
        duration: Duration,
        /// Renew deadline.
        deadline: Duration,
        /// Retry period.
        retry: Duration,
    },
    /// A duration flag is zero.
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// `--concurrency` is zero.
    #[error("--concurrency must be at least 1")]
    ZeroConcurrency,
    /// `--log-format` is neither `text` nor `json`.
    #[error(transparent)]
    LogFormat(#[from] admin::Error),
}

impl Categorized for ConfigError {
    fn category(&self) -> ErrorCategory {
        ErrorCategory::InvalidSpec
    }
}

impl Args {
    /// Validates the flags, reads the secret files they name and builds the configuration.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let leader = self.leader_config()?;
        let user_preferences = self.user_preferences_config()?;
        let refresh_token = match &self.refresh_token_file {
            Some(path) => Some(read_secret("--refresh-token-file", path)?),
            None => None,
        };
        if self.concurrency == 0 {
            return Err(ConfigError::ZeroConcurrency);
        }
        Ok(Config {
            namespace: self
                .namespace
                .clone()
                .filter(|namespace| !namespace.is_empty()),
            ssh_policy: self.ssh_policy,
            gateway: self.gateway()?,
            ca_secret: parse_secret_name(&self.ca_secret)?,
            key_policy: self.key_policy()?,
            user_preferences,
            refresh_token,
            admin_address: self.admin_address,
            leader,
            concurrency: self.concurrency,
        })
    }

    /// Returns the log format flag, parsed.
    pub fn log_format(&self) -> Result<admin::LogFormat, ConfigError> {
        Ok(self.log_format.parse()?)
    }

    fn gateway(&self) -> Result<Gateway, ConfigError> {
        let host = self.gateway_host.trim();
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(ConfigError::InvalidGatewayHost(self.gateway_host.clone()));
        }
        if self.gateway_port == 0 {
            return Err(ConfigError::InvalidGatewayPort(self.gateway_port));
        }
        Ok(Gateway {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: self.gateway_port,
            pod_selector: parse_selector(&self.gateway_pod_selector)?,
            namespace: self
                .gateway_namespace
                .clone()
                .filter(|namespace| !namespace.is_empty()),
        })
    }

    fn key_policy(&self) -> Result<KeyPolicy, ConfigError> {
        let mut policy = KeyPolicy {
            min_rsa_bits: self.min_rsa_bits,
            max_keys: self.max_keys_per_user,
            max_line_length: self.max_key_line_length,
            ..KeyPolicy::default()
        };
        if !self.allowed_key_types.is_empty() {
            policy.allowed_types = self
                .allowed_key_types
                .iter()
                .map(|name| name.trim().to_owned())
                .collect();
        }
        policy.validate()?;
        if policy.max_keys > api::ssh_access::MAX_ACCEPTED_KEYS {
            return Err(ConfigError::TooManyKeysPerUser(policy.max_keys));
        }
        Ok(policy)
    }

    fn leader_config(&self) -> Result<LeaderConfig, ConfigError> {
        let identity = match &self.lease_identity {
            Some(identity) if !identity.is_empty() => identity.clone(),
            _ => default_identity().ok_or(ConfigError::MissingIdentity)?,
        };
        for (flag, value) in [
            ("--lease-duration", self.lease_duration),
            ("--lease-renew-deadline", self.lease_renew_deadline),
            ("--lease-retry-period", self.lease_retry_period),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(flag));
            }
        }
        if self.lease_duration <= self.lease_renew_deadline
            || self.lease_renew_deadline <= self.lease_retry_period
        {
            return Err(ConfigError::LeaseTiming {
                duration: self.lease_duration,
                deadline: self.lease_renew_deadline,
                retry: self.lease_retry_period,
            });
        }
        let namespace = self
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .filter(|namespace| !namespace.is_empty());
        Ok(LeaderConfig {
            namespace,
            name: self.lease_name.clone(),
            identity,
            lease_duration: self.lease_duration,
            renew_deadline: self.lease_renew_deadline,
            retry_period: self.lease_retry_period,
        })
    }

    fn user_preferences_config(&self) -> Result<Option<UserPreferencesConfig>, ConfigError> {
        let Some(template) = &self.user_preferences_url else {
            let stray = self.user_preferences_issuer.is_some()
                || self.user_preferences_token_endpoint.is_some()
                || self.user_preferences_client_id.is_some()
                || self.user_preferences_client_secret_file.is_some();
            if stray {
                return Err(ConfigError::IncompleteUserPreferences(
                    "user-preferences credentials are set but --user-preferences-url is not: \
                     set the URL, or remove the other --user-preferences-* flags"
                        .to_owned(),
                ));
            }
            return Ok(None);
        };
        let url = UrlTemplate::parse(template)?;
        let endpoint = match (
            &self.user_preferences_issuer,
            &self.user_preferences_token_endpoint,
        ) {
            (Some(issuer), None) => TokenEndpoint::Issuer(issuer.clone()),
            (None, Some(endpoint)) => TokenEndpoint::Url(parse_token_endpoint(endpoint)?),
            _ => {
                return Err(ConfigError::IncompleteUserPreferences(
                    "--user-preferences-url needs exactly one of --user-preferences-issuer or \
                     --user-preferences-token-endpoint"
                        .to_owned(),
                ));
            }
        };
        let (Some(client_id), Some(secret_file)) = (
            &self.user_preferences_client_id,
            &self.user_preferences_client_secret_file,
        ) else {
            return Err(ConfigError::IncompleteUserPreferences(
                "--user-preferences-url needs --user-preferences-client-id and \
                 --user-preferences-client-secret-file"
                    .to_owned(),
            ));
        };
        for (flag, value) in [
            (
                "--user-preferences-poll-interval",
                self.user_preferences_poll_interval,
            ),
            ("--user-preferences-timeout", self.user_preferences_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(flag));
            }
        }
        let client_secret = read_secret("--user-preferences-client-secret-file", secret_file)?;
        Ok(Some(UserPreferencesConfig {
            url,
            token: TokenConfig {
                endpoint,
                client_id: client_id.clone(),
                client_secret,
            },
            poll_interval: self.user_preferences_poll_interval,
            request_timeout: self.user_preferences_timeout,
        }))
    }
}

fn parse_token_endpoint(value: &str) -> Result<Url, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidUrl {
        flag: "--user-preferences-token-endpoint",
        value: value.to_owned(),
        reason,
    };
    let url = Url::parse(value).map_err(|error| invalid(error.to_string()))?;
    check_transport(&url).map_err(invalid)?;
    Ok(url)
}

fn parse_secret_name(value: &str) -> Result<SecretName, ConfigError> {
    let invalid = || ConfigError::InvalidSecretName(value.to_owned());
    let (namespace, name) = value.split_once('/').ok_or_else(invalid)?;
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 253
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if !valid(namespace) || !valid(name) {
        return Err(invalid());
    }
    Ok(SecretName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// Parses `key=value[,key=value...]` into match labels.
pub fn parse_selector(value: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidSelector {
        value: value.to_owned(),
        reason,
    };
    let mut labels = BTreeMap::new();
    for pair in value.split(',').map(str::trim) {
        let Some((key, label_value)) = pair.split_once('=') else {
            return Err(invalid(format!("{pair:?} is not key=value")));
        };
        let (key, label_value) = (key.trim(), label_value.trim());
        if key.is_empty() || key.contains(['!', ' ']) || label_value.contains(['=', ' ', '(']) {
            return Err(invalid(format!("{pair:?} is not an equality requirement")));
        }
        labels.insert(key.to_owned(), label_value.to_owned());
    }
    Ok(labels)
}

fn read_secret(flag: &'static str, path: &Path) -> Result<Secret, ConfigError> {
    Secret::from_file(path).map_err(|error| ConfigError::SecretFile {
        flag,
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// Returns the leader-election identity from `$POD_NAME`, else from `$HOSTNAME` or the kernel's
/// host name (see [`identity_from`]).
fn default_identity() -> Option<String> {
    let from_env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let host_name = || {
        from_env("HOSTNAME").or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
        })
    };
    identity_from(from_env("POD_NAME"), host_name)
}

/// Returns `pod_name` as it is, else the host name with `-` and 8 random hex digits appended.
/// Processes on one machine share a host name, and without the suffix each of them would take
/// the other's renewals of the Lease for its own and act as leader.
fn identity_from(
    pod_name: Option<String>,
    host_name: impl FnOnce() -> Option<String>,
) -> Option<String> {
    if pod_name.is_some() {
        return pod_name;
    }
    let host_name = host_name()?;
    let identity = format!("{host_name}-{:08x}", rand::random::<u32>());
    tracing::info!(
        %identity,
        "POD_NAME and --lease-identity are unset: the leader-election identity is the host \
         name with a random suffix"
    );
    Some(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec![
            "renku-ssh-operator",
            "--gateway-host",
            "ssh.renku.example",
            "--ca-secret",
            "renku/ssh-ca",
            "--lease-identity",
            "replica-a",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("flags parse")
    }

    #[test]
    fn defaults_make_valid_config() {
        let config = args(&[]).into_config().expect("valid config");

        assert_eq!(config.ssh_policy, SshPolicy::Annotated);
        assert_eq!(config.gateway.port, 22);
        assert_eq!(
            config.gateway.pod_selector,
            BTreeMap::from([("app.kubernetes.io/name".into(), "renku-ssh-gateway".into())])
        );
        assert_eq!(
            config.ca_secret,
            SecretName {
                namespace: "renku".into(),
                name: "ssh-ca".into()
            }
        );
        assert_eq!(config.key_policy, KeyPolicy::default());
        assert!(config.user_preferences.is_none());
        assert_eq!(config.leader.identity, "replica-a");
        assert_eq!(config.leader.lease_duration, Duration::from_secs(15));
    }

    #[test]
    fn policy_flag_parses_each_value() {
        for (value, expected) in [
            ("all", SshPolicy::All),
            ("annotated", SshPolicy::Annotated),
            ("explicit", SshPolicy::Explicit),
        ] {
            let config = args(&["--ssh-policy", value])
                .into_config()
                .expect("valid config");
            assert_eq!(config.ssh_policy, expected);
        }
        let argv = ["renku-ssh-operator", "--ssh-policy", "some"];
        assert!(Args::try_parse_from(argv).is_err());
    }

    #[test]
    fn key_policy_flags_reach_policy() {
        let config = args(&[
            "--allowed-key-types",
            "ssh-ed25519,ssh-rsa",
            "--min-rsa-bits",
            "3072",
            "--max-keys-per-user",
            "5",
            "--max-key-line-length",
            "4096",
        ])
        .into_config()
        .expect("valid config");

        assert_eq!(config.key_policy.allowed_types, ["ssh-ed25519", "ssh-rsa"]);
        assert_eq!(config.key_policy.min_rsa_bits, 3072);
        assert_eq!(config.key_policy.max_keys, 5);
        assert_eq!(config.key_policy.max_line_length, 4096);
    }

    #[test]
    fn invalid_key_policy_is_rejected() {
        let error = args(&["--allowed-key-types", "ssh-dss"])
            .into_config()
            .expect_err("dss");
        assert!(error.to_string().contains("ssh-dss"), "{error}");

        let error = args(&["--max-keys-per-user", "1000"])
            .into_config()
            .expect_err("too many");
        assert!(error.to_string().contains("1000"), "{error}");
    }

    #[test]
    fn ca_secret_needs_namespace_and_name() {
        for value in ["ssh-ca", "/ssh-ca", "renku/", "Renku/ca"] {
            let mut parsed = args(&[]);
            parsed.ca_secret = value.to_owned();
            let error = parsed.into_config().expect_err("invalid secret name");
            assert!(error.to_string().contains(value), "{error}");
        }
    }

    #[test]
    fn selector_parses_pairs() {
        let labels = parse_selector("app=gw, tier = edge").expect("valid selector");
        assert_eq!(
            labels,
            BTreeMap::from([("app".into(), "gw".into()), ("tier".into(), "edge".into())])
        );
        for invalid in ["app", "app!=gw", "app in (a,b)", "=gw"] {
            assert!(
                parse_selector(invalid).is_err(),
                "{invalid} should be rejected"
            );
        }
    }

    #[test]
    fn gateway_endpoint_and_command() {
        let mut gateway = args(&[]).into_config().expect("valid config").gateway;
        assert_eq!(gateway.endpoint(), "ssh.renku.example:22");
        assert_eq!(gateway.command("alice-1"), "ssh alice-1@ssh.renku.example");

        gateway.port = 2022;
        assert_eq!(gateway.endpoint(), "ssh.renku.example:2022");
        assert_eq!(
            gateway.command("alice-1"),
            "ssh -p 2022 alice-1@ssh.renku.example"
        );

        gateway.host = "::1".into();
        assert_eq!(gateway.endpoint(), "[::1]:2022");
    }

    #[test]
    fn gateway_port_zero_is_rejected() {
        let error = args(&["--gateway-port", "0"])
            .into_config()
            .expect_err("port 0");

        assert!(
            matches!(error, ConfigError::InvalidGatewayPort(0)),
            "{error:?}"
        );
        assert!(error.to_string().contains("--gateway-port 0"), "{error}");
        assert!(error.to_string().contains("1 to 65535"), "{error}");
    }

    #[test]
    fn gateway_port_range_ends_are_valid() {
        for port in ["1", "65535"] {
            let config = args(&["--gateway-port", port])
                .into_config()
                .expect("valid port");
            assert_eq!(config.gateway.port.to_string(), port);
        }
        let argv = ["renku-ssh-operator", "--gateway-port", "65536"];
        assert!(Args::try_parse_from(argv).is_err());
    }

    #[test]
    fn identity_prefers_pod_name() {
        let identity = identity_from(Some("operator-7d9f-x2k4".into()), || Some("node-1".into()));

        assert_eq!(identity.as_deref(), Some("operator-7d9f-x2k4"));
    }

    #[test]
    fn host_name_identity_gets_random_suffix() {
        let first = identity_from(None, || Some("laptop".into())).expect("identity");
        let second = identity_from(None, || Some("laptop".into())).expect("identity");

        let suffix = first.strip_prefix("laptop-").expect("host name prefix");
        assert_eq!(suffix.len(), 8, "{first}");
        assert!(suffix.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
        // Two equal 32-bit suffixes have a probability of 2^-32.
        assert_ne!(first, second);
    }

    #[test]
    fn identity_needs_pod_or_host_name() {
        assert_eq!(identity_from(None, || None), None);
    }

    #[test]
    fn gateway_host_must_be_bare() {
        for host in ["", "ssh://gw", "gw/path", "user@gw"] {
            let mut parsed = args(&[]);
            parsed.gateway_host = host.to_owned();
            assert!(parsed.into_config().is_err(), "{host:?} should be rejected");
        }
    }

    #[test]
    fn url_template_checks_placeholder_and_transport() {
        assert!(UrlTemplate::parse("https://renku.example/api/users/{user}/keys").is_ok());
        assert!(UrlTemplate::parse("http://127.0.0.1:8000/users/{user}").is_ok());
        for invalid in [
            "https://renku.example/api/keys",
            "http://renku.example/users/{user}",
            "ftp://127.0.0.1/{user}",
            "not a url {user}",
        ] {
            assert!(
                UrlTemplate::parse(invalid).is_err(),
                "{invalid} should be rejected"
            );
        }
    }

    #[test]
    fn url_template_encodes_user() {
        let template =
            UrlTemplate::parse("https://renku.example/users/{user}/keys").expect("valid");

        let url = template.for_user("a/b?c d").expect("valid URL");

        assert_eq!(
            url.as_str(),
            "https://renku.example/users/a%2Fb%3Fc%20d/keys"
        );
        let plain = template.for_user("4f7a-b1e_x.y~z").expect("valid URL");
        assert_eq!(plain.path(), "/users/4f7a-b1e_x.y~z/keys");
    }

    #[test]
    fn user_preferences_flags_must_be_complete() {
        let error = args(&["--user-preferences-url", "https://r.example/{user}"])
            .into_config()
            .expect_err("no token flags");
        assert!(
            error.to_string().contains("--user-preferences-issuer"),
            "{error}"
        );

        let error = args(&["--user-preferences-client-id", "op"])
            .into_config()
            .expect_err("no url");
        assert!(
            error.to_string().contains("--user-preferences-url"),
            "{error}"
        );
    }

    #[test]
    fn user_preferences_config_reads_secret_file() {
        let directory =
            std::env::temp_dir().join(format!("operator-config-{}", std::process::id()));
        std::fs::create_dir_all(&directory).expect("temp dir");
        let secret = directory.join("client-secret");
        std::fs::write(&secret, "s3cret\n").expect("write secret");
        let secret_path = secret.to_str().expect("UTF-8 path");

        let config = args(&[
            "--user-preferences-url",
            "https://r.example/users/{user}/keys",
            "--user-preferences-token-endpoint",
            "https://id.example/token",
            "--user-preferences-client-id",
            "renku-ssh-operator",
            "--user-preferences-client-secret-file",
            secret_path,
            "--user-preferences-poll-interval",
            "2m",
        ])
        .into_config()
        .expect("valid config");

        let user_preferences = config.user_preferences.expect("configured");
        assert_eq!(user_preferences.token.client_secret.expose(), "s3cret");
        assert_eq!(user_preferences.poll_interval, Duration::from_secs(120));
        assert_eq!(user_preferences.request_timeout, Duration::from_secs(10));
        assert!(matches!(
            user_preferences.token.endpoint,
            TokenEndpoint::Url(_)
        ));
        assert!(!format!("{:?}", user_preferences.token).contains("s3cret"));
        std::fs::remove_dir_all(&directory).expect("remove temp dir");
    }

    #[test]
    fn lease_timing_must_be_ordered() {
        let error = args(&["--lease-duration", "5s", "--lease-renew-deadline", "10s"])
            .into_config()
            .expect_err("deadline after duration");
        assert!(error.to_string().contains("--lease-duration"), "{error}");
    }

    #[test]
    fn log_format_flag_is_checked() {
        assert_eq!(
            args(&["--log-format", "json"]).log_format().ok(),
            Some(admin::LogFormat::Json)
        );
        assert!(args(&["--log-format", "yaml"]).log_format().is_err());
    }
}
