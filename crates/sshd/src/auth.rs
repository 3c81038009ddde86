//! Authentication policy: keys from `authorized_keys` and user certificates signed by a trusted
//! CA. Both files are read afresh on every attempt, so that kubelet's atomic `..data` swap of a
//! Secret volume takes effect on the next login.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::certificate::CertType;
use russh::keys::{Certificate, HashAlg, PublicKey};
use thiserror::Error;
use tracing::warn;

use crate::keys;

/// Permissions of a login. Keys from `authorized_keys` get everything the server allows; a
/// certificate gets only what its `permit-*` extensions grant, as in OpenSSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// The client may request a pseudo-terminal.
    pub pty: bool,
    /// The client may use `direct-tcpip` and `tcpip-forward`.
    pub port_forwarding: bool,
    /// The client may request agent forwarding.
    pub agent_forwarding: bool,
    /// Command run in place of the requested shell, command or subsystem (`force-command`).
    pub force_command: Option<String>,
}

impl Permissions {
    /// Permissions of a plain public-key login.
    pub fn unrestricted() -> Self {
        Self {
            pty: true,
            port_forwarding: true,
            agent_forwarding: true,
            force_command: None,
        }
    }
}

/// Reasons for rejecting a user certificate.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CertificateRejection {
    /// The server has no `--trusted-user-ca-keys` file.
    #[error("certificate logins are not enabled (no --trusted-user-ca-keys)")]
    NoTrustedCa,
    /// The CA file could not be read.
    #[error("trusted CA file {path} cannot be read: {error}")]
    CaFileUnreadable { path: String, error: String },
    /// The signing key is not listed in the CA file.
    #[error("certificate is signed by {fingerprint}, which is not a trusted CA")]
    UntrustedCa { fingerprint: String },
    /// The signature, or the validity interval, does not check out.
    #[error("certificate is invalid or outside its validity interval")]
    Invalid,
    /// A host certificate was offered for a user login.
    #[error("certificate is a host certificate, not a user certificate")]
    NotUserCertificate,
    /// The certificate does not list the required principal.
    #[error("certificate principals {principals:?} do not include {expected:?}")]
    WrongPrincipal {
        principals: Vec<String>,
        expected: String,
    },
    /// An empty principal list, which OpenSSH also rejects with TrustedUserCAKeys.
    #[error("certificate lists no principals")]
    NoPrincipals,
    /// A critical option this server does not implement.
    #[error("certificate has unsupported critical option {0:?}")]
    UnknownCriticalOption(String),
    /// `source-address` does not match the client address.
    #[error("client address {address} is not in the certificate's source-address {allowed:?}")]
    SourceAddress { address: IpAddr, allowed: String },
}

/// Authentication settings: the key files and the principal certificates must list.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// `authorized_keys` file.
    pub authorized_keys: Option<PathBuf>,
    /// File of trusted CA public keys.
    pub trusted_user_ca_keys: Option<PathBuf>,
    /// Principal a certificate must list.
    pub principal: Option<String>,
}

impl AuthPolicy {
    /// Returns whether certificate logins are configured.
    pub fn accepts_certificates(&self) -> bool {
        self.trusted_user_ca_keys.is_some() && self.principal.is_some()
    }

    /// Returns whether `key` is listed in the `authorized_keys` file, read now.
    pub fn is_authorized_key(&self, key: &PublicKey) -> bool {
        let Some(path) = &self.authorized_keys else {
            return false;
        };
        let text = match keys::read_key_file(path) {
            Ok(text) => text,
            Err(error) => {
                warn!(file = %path.display(), %error, "cannot read authorized_keys");
                return false;
            }
        };
        keys::parse_authorized_keys(&text, path)
            .iter()
            .any(|candidate| candidate.key_data() == key.key_data())
    }

    /// Checks a user certificate whose signature over the session russh has verified: trusted
    /// CA, user type, validity, principal and critical options. Returns the permissions that
    /// the certificate grants.
    pub fn check_certificate(
        &self,
        certificate: &Certificate,
        client: IpAddr,
    ) -> Result<Permissions, CertificateRejection> {
        let (Some(path), Some(principal)) = (&self.trusted_user_ca_keys, &self.principal) else {
            return Err(CertificateRejection::NoTrustedCa);
        };
        let text =
            keys::read_key_file(path).map_err(|error| CertificateRejection::CaFileUnreadable {
                path: path.display().to_string(),
                error: error.to_string(),
            })?;
        let authorities = keys::parse_authorized_keys(&text, path);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        check_certificate_at(certificate, &authorities, principal, client, now)
    }
}

/// Checks a certificate against CA keys at the Unix time `now`.
pub fn check_certificate_at(
    certificate: &Certificate,
    authorities: &[PublicKey],
    principal: &str,
    client: IpAddr,
    now: u64,
) -> Result<Permissions, CertificateRejection> {
    let signer = certificate.signature_key();
    if !authorities.iter().any(|ca| ca.key_data() == signer) {
        return Err(CertificateRejection::UntrustedCa {
            fingerprint: signer.fingerprint(HashAlg::Sha256).to_string(),
        });
    }
    let fingerprints: Vec<_> = authorities
        .iter()
        .map(|ca| ca.fingerprint(HashAlg::Sha256))
        .collect();
    certificate
        .validate_at(now, fingerprints.iter())
        .map_err(|_| CertificateRejection::Invalid)?;
    if certificate.cert_type() != CertType::User {
        return Err(CertificateRejection::NotUserCertificate);
    }
    let principals = certificate.valid_principals();
    if principals.is_empty() {
        return Err(CertificateRejection::NoPrincipals);
    }
    if !principals.iter().any(|listed| listed == principal) {
        return Err(CertificateRejection::WrongPrincipal {
            principals: principals.to_vec(),
            expected: principal.to_owned(),
        });
    }

    let mut permissions = Permissions {
        pty: false,
        port_forwarding: false,
        agent_forwarding: false,
        force_command: None,
    };
    for (name, value) in certificate.critical_options().iter() {
        match name.as_str() {
            "force-command" => permissions.force_command = Some(value.clone()),
            "source-address" => {
                if !address_in_list(client, value) {
                    return Err(CertificateRejection::SourceAddress {
                        address: client,
                        allowed: value.clone(),
                    });
                }
            }
            other => {
                return Err(CertificateRejection::UnknownCriticalOption(
                    other.to_owned(),
                ));
            }
        }
    }
    let extensions = certificate.extensions();
    permissions.pty = extensions.contains_key("permit-pty");
    permissions.port_forwarding = extensions.contains_key("permit-port-forwarding");
    permissions.agent_forwarding = extensions.contains_key("permit-agent-forwarding");
    Ok(permissions)
}

/// Returns whether `address` matches one entry of a comma-separated list of addresses and
/// CIDR blocks (the `source-address` format). Unparsable entries match nothing.
pub fn address_in_list(address: IpAddr, list: &str) -> bool {
    let address = canonical(address);
    list.split(',').map(str::trim).any(|entry| {
        let (network, prefix) = match entry.split_once('/') {
            Some((network, prefix)) => (network, prefix.parse::<u32>().ok()),
            None => (entry, None),
        };
        let Ok(network) = network.parse::<IpAddr>() else {
            return false;
        };
        match (canonical(network), address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let prefix = prefix.unwrap_or(32);
                prefix <= 32
                    && masked(u32::from(network), prefix) == masked(u32::from(address), prefix)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let prefix = prefix.unwrap_or(128);
                prefix <= 128
                    && masked128(u128::from(network), prefix)
                        == masked128(u128::from(address), prefix)
            }
            _ => false,
        }
    })
}

fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
        v4 => v4,
    }
}

fn masked(value: u32, prefix: u32) -> u32 {
    if prefix == 0 {
        0
    } else {
        value & (u32::MAX << (32 - prefix))
    }
}

fn masked128(value: u128, prefix: u32) -> u128 {
    if prefix == 0 {
        0
    } else {
        value & (u128::MAX << (128 - prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_address_matching() {
        let client: IpAddr = "10.1.2.3".parse().expect("ip");
        assert!(address_in_list(client, "10.0.0.0/8"));
        assert!(address_in_list(client, "192.168.0.1, 10.1.2.3"));
        assert!(!address_in_list(client, "10.1.3.0/24"));
        assert!(!address_in_list(client, "garbage"));
        assert!(address_in_list(client, "0.0.0.0/0"));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert!(address_in_list(mapped, "10.1.2.0/24"));
        let v6: IpAddr = "fd00::5".parse().expect("ip");
        assert!(address_in_list(v6, "fd00::/64"));
        assert!(!address_in_list(v6, "10.0.0.0/8"));
    }

    #[test]
    fn unrestricted_permissions_allow_everything() {
        let permissions = Permissions::unrestricted();
        assert!(permissions.pty);
        assert!(permissions.port_forwarding);
        assert!(permissions.agent_forwarding);
        assert_eq!(permissions.force_command, None);
    }
}
