//! Settings of the webhook, their command-line flags and their validation.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::policy::SshPolicy;
use crate::sidecar::{InjectionConfig, Resources, SidecarImage, default_install_command};

/// Default name of the Secret with the self-managed CA and serving certificate.
pub const DEFAULT_TLS_SECRET: &str = "renku-ssh-webhook-tls";
/// Default name of the webhook's Service, whose DNS names the serving certificate lists.
pub const DEFAULT_SERVICE: &str = "renku-ssh-webhook";
/// Default name of the MutatingWebhookConfiguration.
pub const DEFAULT_CONFIGURATION: &str = "renku-ssh-webhook";
/// Default name of the webhook entry in the MutatingWebhookConfiguration.
pub const DEFAULT_WEBHOOK_NAME: &str = "sidecar.ssh.renku.io";
/// URL path the webhook serves admission reviews on.
pub const MUTATE_PATH: &str = "/mutate";

/// Everything the webhook needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address of the HTTPS server.
    pub listen: SocketAddr,
    /// Rule that selects the sessions that get the sidecar.
    pub policy: SshPolicy,
    /// Namespace whose AmaltheaSessions and SSHAccesses the caches watch; every namespace when
    /// `None`.
    pub watch_namespace: Option<String>,
    /// Settings of the injected containers.
    pub injection: InjectionConfig,
    /// Source of the serving certificate.
    pub tls: TlsConfig,
    /// The MutatingWebhookConfiguration and webhook entry that call this server.
    pub webhook_configuration: WebhookConfigurationRef,
    /// When set, the webhook applies its own MutatingWebhookConfiguration, for local runs.
    pub registration: Option<Registration>,
    /// How long an admission waits for the caches to finish their first list after start-up.
    /// It must stay well below the webhook timeout of 5 s.
    pub cache_sync_wait: Duration,
}

/// Source of the serving certificate.
#[derive(Clone, Debug)]
pub enum TlsConfig {
    /// The webhook keeps its own CA and certificate in a Secret and writes the CA into the
    /// `caBundle` of its webhook entries.
    SelfManaged(SelfManagedTls),
    /// Certificate and key files, for example from a cert-manager Certificate mounted as a
    /// Secret volume. They are reloaded when they change; `caBundle` is left to cert-manager's
    /// CA injector.
    Files(FileTls),
}

/// Settings of the self-managed certificate.
#[derive(Clone, Debug)]
pub struct SelfManagedTls {
    /// Secret that stores the CA and the serving certificate.
    pub secret: ObjectName,
    /// Service in front of the webhook; the certificate lists its DNS names.
    pub service: ObjectName,
    /// More subject alternative names, for example `127.0.0.1` for a local run.
    pub extra_sans: Vec<SubjectAltName>,
    /// Whether to keep `caBundle` of the webhook entries in sync with the CA.
    pub sync_ca_bundle: bool,
}

/// Certificate files and how often to look for changes.
#[derive(Clone, Debug)]
pub struct FileTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// Interval between checks for changed files.
    pub reload_interval: Duration,
}

/// Names of the MutatingWebhookConfiguration and of the webhook entries this server serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfigurationRef {
    /// Name of the MutatingWebhookConfiguration.
    pub name: String,
    /// Name of the webhook entry (`webhooks[].name`); entries with other names are never
    /// modified.
    pub webhook_name: String,
}

impl Default for WebhookConfigurationRef {
    fn default() -> Self {
        Self {
            name: DEFAULT_CONFIGURATION.to_owned(),
            webhook_name: DEFAULT_WEBHOOK_NAME.to_owned(),
        }
    }
}

/// A MutatingWebhookConfiguration the webhook applies itself, with a URL client config.
#[derive(Clone, Debug)]
pub struct Registration {
    /// URL the API server calls, for example `https://127.0.0.1:8443/mutate`.
    pub url: String,
    /// Restricts the webhook to namespaces with these labels; every namespace when `None`.
    pub namespace_selector: Option<LabelSelector>,
}

/// Namespace and name of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectName {
    /// Returns the name from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `namespace/name`, or `name` in `default_namespace`.
    pub fn parse(value: &str, default_namespace: Option<&str>) -> Result<Self, ConfigError> {
        let invalid = || ConfigError::InvalidObjectName(value.to_owned());
        let (namespace, name) = match value.split_once('/') {
            Some((namespace, name)) => (namespace, name),
            None => (default_namespace.ok_or_else(invalid)?, value),
        };
        if !is_dns_label(namespace) || !is_dns_subdomain(name) {
            return Err(invalid());
        }
        Ok(Self::new(namespace, name))
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.namespace, self.name)
    }
}

/// A subject alternative name of the serving certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectAltName {
    /// A DNS name.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

impl FromStr for SubjectAltName {
    type Err = ConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if let Ok(address) = value.parse::<IpAddr>() {
            return Ok(Self::Ip(address));
        }
        if is_dns_subdomain(value) {
            return Ok(Self::Dns(value.to_owned()));
        }
        Err(ConfigError::InvalidSan(value.to_owned()))
    }
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => formatter.write_str(name),
            Self::Ip(address) => write!(formatter, "{address}"),
        }
    }
}

/// Returns the DNS names a Service is reached by inside the cluster.
pub fn service_dns_names(service: &ObjectName) -> Vec<SubjectAltName> {
    let ObjectName { namespace, name } = service;
    [
        name.clone(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
    ]
    .into_iter()
    .map(SubjectAltName::Dns)
    .collect()
}

/// Errors in the webhook settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An object name is not `namespace/name`.
    #[error(
        "invalid object name {0:?}: use `namespace/name` with a DNS-label namespace and a \
         lowercase DNS-subdomain name"
    )]
    InvalidObjectName(String),
    /// A subject alternative name is neither an IP address nor a DNS name.
    #[error("invalid subject alternative name {0:?}: use an IP address or a lowercase DNS name")]
    InvalidSan(String),
    /// A setting that must be set is missing.
    #[error("missing setting: {0}")]
    Missing(&'static str),
    /// A setting has an invalid value.
    #[error("invalid {setting} {value:?}: {hint}")]
    Invalid {
        /// Flag or field name.
        setting: &'static str,
        /// The value given.
        value: String,
        /// Example or description of a valid value.
        hint: &'static str,
    },
}

impl Config {
    /// Checks every setting that would otherwise make the API server reject patched pods, or
    /// stop the webhook later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_injection(&self.injection)?;
        if self.cache_sync_wait >= Duration::from_secs(4) {
            return Err(ConfigError::Invalid {
                setting: "cache sync wait",
                value: format!("{:?}", self.cache_sync_wait),
                hint: "use less than 4s, below the webhook timeout of 5s",
            });
        }
        if let Some(registration) = &self.registration
            && !registration.url.starts_with("https://")
        {
            return Err(ConfigError::Invalid {
                setting: "--webhook-register-url",
                value: registration.url.clone(),
                hint: "the API server calls webhooks over HTTPS: use https://HOST:PORT/mutate",
            });
        }
        if self.webhook_configuration.name.is_empty()
            || self.webhook_configuration.webhook_name.is_empty()
        {
            return Err(ConfigError::Missing(
                "--webhook-configuration and --webhook-name",
            ));
        }
        Ok(())
    }
}

fn validate_injection(injection: &InjectionConfig) -> Result<(), ConfigError> {
    validate_image("--webhook-install-image", &injection.install_image)?;
    validate_pull_policy(injection.install_image_pull_policy.as_deref())?;
    if injection
        .install_command
        .first()
        .is_none_or(|program| program.is_empty())
    {
        return Err(ConfigError::Missing("--webhook-install-command"));
    }
    if let SidecarImage::Dedicated { image, pull_policy } = &injection.sidecar_image {
        validate_image("--webhook-sidecar-image", image)?;
        validate_pull_policy(pull_policy.as_deref())?;
    }
    validate_resources(&injection.sidecar_resources)?;
    validate_resources(&injection.install_resources)
}

fn validate_image(setting: &'static str, image: &str) -> Result<(), ConfigError> {
    if image.is_empty() || image.chars().any(char::is_whitespace) {
        return Err(ConfigError::Invalid {
            setting,
            value: image.to_owned(),
            hint: "use an image reference such as registry.example/renku-sshd:1.0",
        });
    }
    Ok(())
}

fn validate_pull_policy(policy: Option<&str>) -> Result<(), ConfigError> {
    match policy {
        None | Some("Always" | "IfNotPresent" | "Never") => Ok(()),
        Some(other) => Err(ConfigError::Invalid {
            setting: "image pull policy",
            value: other.to_owned(),
            hint: "use Always, IfNotPresent or Never",
        }),
    }
}

/// Checks the quantities, and that no request exceeds its limit: the API server rejects a pod
/// whose container requests more than its limit.
fn validate_resources(resources: &Resources) -> Result<(), ConfigError> {
    let cpu_request = parse_quantity("CPU request", &resources.cpu_request)?;
    let cpu_limit = parse_quantity("CPU limit", &resources.cpu_limit)?;
    let memory_request = parse_quantity("memory request", &resources.memory_request)?;
    let memory_limit = parse_quantity("memory limit", &resources.memory_limit)?;
    if cpu_request > cpu_limit {
        return Err(ConfigError::Invalid {
            setting: "CPU request",
            value: resources.cpu_request.clone(),
            hint: "a request must not exceed its limit",
        });
    }
    if memory_request > memory_limit {
        return Err(ConfigError::Invalid {
            setting: "memory request",
            value: resources.memory_request.clone(),
            hint: "a request must not exceed its limit",
        });
    }
    Ok(())
}

/// Parses a non-negative Kubernetes quantity (`100m`, `1.5`, `64Mi`, `1e3`) into its value.
pub fn parse_quantity(setting: &'static str, text: &str) -> Result<f64, ConfigError> {
    let invalid = || ConfigError::Invalid {
        setting,
        value: text.to_owned(),
        hint: "use a Kubernetes quantity such as 100m, 1, 64Mi or 1Gi",
    };
    let number_end = text
        .find(|character: char| !(character.is_ascii_digit() || character == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return Err(invalid());
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..].parse().map_err(|_| invalid())?;
            10.0_f64.powi(power)
        }
        _ => return Err(invalid()),
    };
    Ok(value * multiplier)
}

fn is_dns_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

fn is_dns_subdomain(value: &str) -> bool {
    value.len() <= 253 && value.split('.').all(is_dns_label)
}

/// Command-line flags of the webhook, for a binary to include with `#[command(flatten)]`. Each
/// flag can also be set through the environment variable named in its help.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "webhook_args")]
#[command(next_help_heading = "Sidecar webhook")]
pub struct Args {
    /// Serve the mutating admission webhook that adds the SSH sidecar to session pods.
    #[arg(long = "webhook", env = "RENKU_SSH_WEBHOOK")]
    pub enabled: bool,

    /// Address and port of the webhook's HTTPS server.
    #[arg(
        long = "webhook-address",
        env = "RENKU_SSH_WEBHOOK_ADDRESS",
        default_value = "0.0.0.0:8443"
    )]
    pub address: SocketAddr,

    /// Image of the init container that copies the static renku-sshd into the pod.
    #[arg(
        long = "webhook-install-image",
        env = "RENKU_SSH_WEBHOOK_INSTALL_IMAGE"
    )]
    pub install_image: Option<String>,

    /// Pull policy of the install image: Always, IfNotPresent or Never.
    #[arg(
        long = "webhook-install-image-pull-policy",
        env = "RENKU_SSH_WEBHOOK_INSTALL_IMAGE_PULL_POLICY"
    )]
    pub install_image_pull_policy: Option<String>,

    /// Command of the init container, comma-separated. It must copy renku-sshd to
    /// /opt/renku-ssh/bin/renku-sshd.
    #[arg(
        long = "webhook-install-command",
        env = "RENKU_SSH_WEBHOOK_INSTALL_COMMAND",
        value_delimiter = ',',
        default_value = "/bin/cp,/renku-sshd,/opt/renku-ssh/bin/renku-sshd"
    )]
    pub install_command: Vec<String>,

    /// Image of the sidecar. Unset: the session container's image.
    #[arg(
        long = "webhook-sidecar-image",
        env = "RENKU_SSH_WEBHOOK_SIDECAR_IMAGE"
    )]
    pub sidecar_image: Option<String>,

    /// Pull policy of --webhook-sidecar-image: Always, IfNotPresent or Never.
    #[arg(
        long = "webhook-sidecar-image-pull-policy",
        env = "RENKU_SSH_WEBHOOK_SIDECAR_IMAGE_PULL_POLICY"
    )]
    pub sidecar_image_pull_policy: Option<String>,

    /// CPU request of the sidecar (Kubernetes quantity).
    #[arg(
        long = "webhook-sidecar-cpu-request",
        env = "RENKU_SSH_WEBHOOK_SIDECAR_CPU_REQUEST",
        default_value = "10m"
    )]
    pub sidecar_cpu_request: String,

    /// Memory request of the sidecar (Kubernetes quantity).
    #[arg(
        long = "webhook-sidecar-memory-request",
        env = "RENKU_SSH_WEBHOOK_SIDECAR_MEMORY_REQUEST",
        default_value = "32Mi"
    )]
    pub sidecar_memory_request: String,

    /// CPU limit of the sidecar. Commands of SSH logins run in the sidecar, so it caps them.
    #[arg(
        long = "webhook-sidecar-cpu-limit",
        env = "RENKU_SSH_WEBHOOK_SIDECAR_CPU_LIMIT",
        default_value = "1"
    )]
    pub sidecar_cpu_limit: String,

    /// Memory limit of the sidecar. Commands of SSH logins run in the sidecar, so it caps them.
    #[arg(
        long = "webhook-sidecar-memory-limit",
        env = "RENKU_SSH_WEBHOOK_SIDECAR_MEMORY_LIMIT",
        default_value = "512Mi"
    )]
    pub sidecar_memory_limit: String,

    /// Source of the serving certificate: `self-managed` (a Secret with a CA the webhook
    /// creates) or `files` (--webhook-tls-cert-file and --webhook-tls-key-file, for example from
    /// cert-manager).
    #[arg(long = "webhook-tls-mode", env = "RENKU_SSH_WEBHOOK_TLS_MODE", value_enum, default_value_t = TlsMode::SelfManaged)]
    pub tls_mode: TlsMode,

    /// Secret of the self-managed certificate, as namespace/name or name (in the namespace of
    /// --webhook-service).
    #[arg(long = "webhook-tls-secret", env = "RENKU_SSH_WEBHOOK_TLS_SECRET", default_value = DEFAULT_TLS_SECRET)]
    pub tls_secret: String,

    /// Service in front of the webhook, as namespace/name or name (in $POD_NAMESPACE). The
    /// self-managed certificate lists its DNS names.
    #[arg(long = "webhook-service", env = "RENKU_SSH_WEBHOOK_SERVICE", default_value = DEFAULT_SERVICE)]
    pub service: String,

    /// More subject alternative names of the self-managed certificate (IP addresses or DNS
    /// names), comma-separated.
    #[arg(
        long = "webhook-extra-san",
        env = "RENKU_SSH_WEBHOOK_EXTRA_SANS",
        value_delimiter = ','
    )]
    pub extra_sans: Vec<String>,

    /// PEM certificate chain for --webhook-tls-mode files.
    #[arg(
        long = "webhook-tls-cert-file",
        env = "RENKU_SSH_WEBHOOK_TLS_CERT_FILE"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key for --webhook-tls-mode files.
    #[arg(long = "webhook-tls-key-file", env = "RENKU_SSH_WEBHOOK_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// Name of the MutatingWebhookConfiguration whose caBundle the webhook keeps in sync.
    #[arg(long = "webhook-configuration", env = "RENKU_SSH_WEBHOOK_CONFIGURATION", default_value = DEFAULT_CONFIGURATION)]
    pub configuration: String,

    /// Name of this webhook's entry in the MutatingWebhookConfiguration.
    #[arg(long = "webhook-name", env = "RENKU_SSH_WEBHOOK_NAME", default_value = DEFAULT_WEBHOOK_NAME)]
    pub webhook_name: String,

    /// Apply the MutatingWebhookConfiguration with this URL as its client config, for local
    /// runs where the API server reaches the webhook directly (https://127.0.0.1:8443/mutate).
    #[arg(long = "webhook-register-url", env = "RENKU_SSH_WEBHOOK_REGISTER_URL")]
    pub register_url: Option<String>,
}

/// Values of `--webhook-tls-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// A CA and certificate the webhook creates and keeps in a Secret.
    SelfManaged,
    /// Certificate and key files, reloaded when they change.
    Files,
}

impl Args {
    /// Builds and validates the settings. `policy` is the operator's SSH policy, and
    /// `pod_namespace` the namespace the process runs in (`$POD_NAMESPACE`), used for names given
    /// without a namespace.
    pub fn to_config(
        &self,
        policy: SshPolicy,
        pod_namespace: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let install_image = self.install_image.clone().ok_or(ConfigError::Missing(
            "--webhook-install-image: the image with the static renku-sshd that the init \
             container copies into the pod",
        ))?;
        let sidecar_image = match &self.sidecar_image {
            None => SidecarImage::Session,
            Some(image) => SidecarImage::Dedicated {
                image: image.clone(),
                pull_policy: self.sidecar_image_pull_policy.clone(),
            },
        };
        let injection = InjectionConfig {
            install_image,
            install_image_pull_policy: self.install_image_pull_policy.clone(),
            install_command: if self.install_command.is_empty() {
                default_install_command()
            } else {
                self.install_command.clone()
            },
            sidecar_image,
            sidecar_resources: Resources {
                cpu_request: self.sidecar_cpu_request.clone(),
                memory_request: self.sidecar_memory_request.clone(),
                cpu_limit: self.sidecar_cpu_limit.clone(),
                memory_limit: self.sidecar_memory_limit.clone(),
            },
            install_resources: Resources::install_default(),
        };
        let tls = match self.tls_mode {
            TlsMode::SelfManaged => {
                let service = ObjectName::parse(&self.service, pod_namespace)?;
                let secret = ObjectName::parse(&self.tls_secret, Some(&service.namespace))?;
                let extra_sans = self
                    .extra_sans
                    .iter()
                    .filter(|san| !san.is_empty())
                    .map(|san| san.parse())
                    .collect::<Result<_, _>>()?;
                TlsConfig::SelfManaged(SelfManagedTls {
                    secret,
                    service,
                    extra_sans,
                    sync_ca_bundle: true,
                })
            }
            TlsMode::Files => TlsConfig::Files(FileTls {
                cert_file: self
                    .tls_cert_file
                    .clone()
                    .ok_or(ConfigError::Missing("--webhook-tls-cert-file"))?,
                key_file: self
                    .tls_key_file
                    .clone()
                    .ok_or(ConfigError::Missing("--webhook-tls-key-file"))?,
                reload_interval: Duration::from_secs(10),
            }),
        };
        let config = Config {
            listen: self.address,
            policy,
            watch_namespace: None,
            injection,
            tls,
            webhook_configuration: WebhookConfigurationRef {
                name: self.configuration.clone(),
                webhook_name: self.webhook_name.clone(),
            },
            registration: self.register_url.clone().map(|url| Registration {
                url,
                namespace_selector: None,
            }),
            cache_sync_wait: Duration::from_secs(2),
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        webhook: Args,
    }

    fn parse(flags: &[&str]) -> Args {
        let arguments = std::iter::once("operator").chain(flags.iter().copied());
        Command::try_parse_from(arguments)
            .expect("flags parse")
            .webhook
    }

    #[test]
    fn quantities_parse_with_suffixes() {
        let cases = [
            ("10m", 0.01),
            ("1", 1.0),
            ("1.5", 1.5),
            ("64Mi", 67_108_864.0),
            ("1e3", 1000.0),
            ("2k", 2000.0),
        ];
        for (text, expected) in cases {
            let value = parse_quantity("test", text).expect(text);
            assert!((value - expected).abs() < 1e-9, "{text}: {value}");
        }
        for text in ["", "Mi", "1..0", "-1", "1 Gi", "1Xi", "1e"] {
            assert!(
                parse_quantity("test", text).is_err(),
                "{text} must be rejected"
            );
        }
    }

    #[test]
    fn request_above_limit_is_rejected() {
        let resources = Resources::new("2", "32Mi", "1", "64Mi");
        let error = validate_resources(&resources).expect_err("2 CPUs exceed the limit of 1");
        assert!(error.to_string().contains("CPU request"), "{error}");
    }

    #[test]
    fn object_names_take_default_namespace() {
        assert_eq!(
            ObjectName::parse("a/b", None).ok(),
            Some(ObjectName::new("a", "b"))
        );
        assert_eq!(
            ObjectName::parse("b", Some("ns")).ok(),
            Some(ObjectName::new("ns", "b"))
        );
        assert!(ObjectName::parse("b", None).is_err());
        assert!(ObjectName::parse("Bad/name", None).is_err());
    }

    #[test]
    fn subject_alt_names_parse() {
        assert_eq!(
            "127.0.0.1".parse::<SubjectAltName>().ok(),
            Some(SubjectAltName::Ip([127, 0, 0, 1].into()))
        );
        assert_eq!(
            "webhook.renku.svc".parse::<SubjectAltName>().ok(),
            Some(SubjectAltName::Dns("webhook.renku.svc".to_owned()))
        );
        assert!("bad name".parse::<SubjectAltName>().is_err());
    }

    #[test]
    fn flags_build_self_managed_config() {
        let args = parse(&[
            "--webhook",
            "--webhook-install-image",
            "registry.example/renku-sshd:1",
            "--webhook-extra-san",
            "127.0.0.1,localhost",
        ]);
        let config = args
            .to_config(SshPolicy::Annotated, Some("renku"))
            .expect("valid config");
        let TlsConfig::SelfManaged(tls) = config.tls else {
            panic!("self-managed by default")
        };
        assert_eq!(tls.secret, ObjectName::new("renku", DEFAULT_TLS_SECRET));
        assert_eq!(tls.service, ObjectName::new("renku", DEFAULT_SERVICE));
        assert_eq!(tls.extra_sans.len(), 2);
        assert_eq!(config.injection.install_command, default_install_command());
        assert_eq!(config.injection.sidecar_image, SidecarImage::Session);
    }

    #[test]
    fn missing_install_image_names_flag() {
        let error = parse(&["--webhook"])
            .to_config(SshPolicy::All, Some("renku"))
            .expect_err("no image");
        assert!(
            error.to_string().contains("--webhook-install-image"),
            "{error}"
        );
    }

    #[test]
    fn files_mode_requires_both_files() {
        let args = parse(&[
            "--webhook-install-image",
            "img:1",
            "--webhook-tls-mode",
            "files",
            "--webhook-tls-cert-file",
            "/tls/tls.crt",
        ]);
        let error = args
            .to_config(SshPolicy::All, None)
            .expect_err("no key file");
        assert!(
            error.to_string().contains("--webhook-tls-key-file"),
            "{error}"
        );
    }

    #[test]
    fn register_url_must_be_https() {
        let args = parse(&[
            "--webhook-install-image",
            "img:1",
            "--webhook-register-url",
            "http://127.0.0.1:8443/mutate",
        ]);
        let error = args
            .to_config(SshPolicy::All, Some("renku"))
            .expect_err("http URL");
        assert!(error.to_string().contains("HTTPS"), "{error}");
    }
}
