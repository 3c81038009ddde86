//! Generation and inspection of the self-managed CA and serving certificate. Pure functions of
//! their inputs and the current time; nothing here talks to the API server.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use super::TlsError;
use crate::config::SubjectAltName;

/// Validity of a new CA. The webhook never rotates its CA.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// Validity of a new serving certificate.
pub const SERVING_VALIDITY: Duration = Duration::days(365);
/// A serving certificate is reissued when it expires within this time.
pub const RENEW_BEFORE: Duration = Duration::days(30);
/// Start of validity before the issuing time, so that clocks that lag a little accept it.
const BACKDATE: Duration = Duration::hours(1);

/// A certificate and its private key, both PEM. `Debug` omits the key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedCertificate {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
}

impl fmt::Debug for KeyedCertificate {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("KeyedCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Creates a self-signed CA valid from `now`.
pub fn generate_ca(now: OffsetDateTime) -> Result<KeyedCertificate, TlsError> {
    let key = KeyPair::generate().map_err(TlsError::Generate)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "renku-ssh-webhook-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    Ok(KeyedCertificate {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a serving certificate for `sans`, signed by `ca`, valid from `now`.
pub fn issue_serving(
    ca: &KeyedCertificate,
    sans: &[SubjectAltName],
    now: OffsetDateTime,
) -> Result<KeyedCertificate, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)
        .map_err(|error| TlsError::invalid_pem("CA private key", error))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(|error| TlsError::invalid_pem("CA certificate", error))?;
    let key = KeyPair::generate().map_err(TlsError::Generate)?;
    let mut params = CertificateParams::default();
    let common_name = sans
        .first()
        .map(ToString::to_string)
        .unwrap_or_else(|| "renku-ssh-webhook".to_owned());
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = sans.iter().map(san_type).collect::<Result<_, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + SERVING_VALIDITY;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(TlsError::Generate)?;
    Ok(KeyedCertificate {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn san_type(san: &SubjectAltName) -> Result<SanType, TlsError> {
    match san {
        SubjectAltName::Ip(address) => Ok(SanType::IpAddress(*address)),
        SubjectAltName::Dns(name) => name
            .clone()
            .try_into()
            .map(SanType::DnsName)
            .map_err(TlsError::Generate),
    }
}

/// Checks that `ca` is a usable CA: its key parses and belongs to its certificate.
pub fn check_ca(ca: &KeyedCertificate, now: OffsetDateTime) -> Result<(), String> {
    let pem = parse_pem(&ca.cert_pem)?;
    let cert = parse_cert(&pem)?;
    let key = KeyPair::from_pem(&ca.key_pem).map_err(|error| format!("invalid CA key: {error}"))?;
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err("the CA key does not belong to the CA certificate".to_owned());
    }
    if cert.validity().not_after.timestamp() <= now.unix_timestamp() {
        return Err("the CA certificate has expired".to_owned());
    }
    Ok(())
}

/// Returns why `serving` must be reissued, or `None` when it is signed by `ca`, lists every name
/// in `sans`, matches its key and stays valid for longer than [`RENEW_BEFORE`].
pub fn reissue_reason(
    ca: &KeyedCertificate,
    serving: &KeyedCertificate,
    sans: &[SubjectAltName],
    now: OffsetDateTime,
) -> Option<String> {
    check_serving(ca, serving, sans, now).err()
}

fn check_serving(
    ca: &KeyedCertificate,
    serving: &KeyedCertificate,
    sans: &[SubjectAltName],
    now: OffsetDateTime,
) -> Result<(), String> {
    let ca_pem = parse_pem(&ca.cert_pem)?;
    let ca_cert = parse_cert(&ca_pem)?;
    let pem = parse_pem(&serving.cert_pem)?;
    let cert = parse_cert(&pem)?;
    cert.verify_signature(Some(ca_cert.public_key()))
        .map_err(|_| "the serving certificate is not signed by the CA".to_owned())?;
    let key = KeyPair::from_pem(&serving.key_pem)
        .map_err(|error| format!("invalid serving key: {error}"))?;
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err("the serving key does not belong to the serving certificate".to_owned());
    }
    let renew_at = cert.validity().not_after.timestamp() - RENEW_BEFORE.whole_seconds();
    if renew_at <= now.unix_timestamp() {
        return Err("the serving certificate expires within 30 days".to_owned());
    }
    let listed = listed_sans(&cert)?;
    if let Some(missing) = sans.iter().find(|san| !listed.contains(san)) {
        return Err(format!("the serving certificate does not list {missing}"));
    }
    Ok(())
}

fn parse_pem(text: &str) -> Result<Pem, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
        .map_err(|error| format!("invalid PEM certificate: {error}"))?;
    Ok(pem)
}

fn parse_cert(pem: &Pem) -> Result<X509Certificate<'_>, String> {
    pem.parse_x509()
        .map_err(|error| format!("invalid certificate: {error}"))
}

fn listed_sans(cert: &X509Certificate<'_>) -> Result<Vec<SubjectAltName>, String> {
    let extension = cert
        .subject_alternative_name()
        .map_err(|error| format!("invalid subjectAltName extension: {error}"))?;
    let names = extension
        .map(|extension| extension.value.general_names.as_slice())
        .unwrap_or_default();
    let mut listed = Vec::new();
    for name in names {
        match name {
            GeneralName::DNSName(dns) => listed.push(SubjectAltName::Dns((*dns).to_owned())),
            GeneralName::IPAddress(bytes) => {
                if let Ok(octets) = <[u8; 4]>::try_from(*bytes) {
                    listed.push(SubjectAltName::Ip(octets.into()));
                } else if let Ok(octets) = <[u8; 16]>::try_from(*bytes) {
                    listed.push(SubjectAltName::Ip(octets.into()));
                }
            }
            _ => {}
        }
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sans() -> Vec<SubjectAltName> {
        vec![
            SubjectAltName::Dns("renku-ssh-webhook.renku.svc".to_owned()),
            SubjectAltName::Ip([127, 0, 0, 1].into()),
        ]
    }

    #[test]
    fn fresh_certificate_needs_no_reissue() {
        let now = OffsetDateTime::now_utc();
        let ca = generate_ca(now).expect("CA");
        assert_eq!(check_ca(&ca, now), Ok(()));
        let serving = issue_serving(&ca, &sans(), now).expect("serving certificate");
        assert_eq!(reissue_reason(&ca, &serving, &sans(), now), None);
    }

    #[test]
    fn missing_name_triggers_reissue() {
        let now = OffsetDateTime::now_utc();
        let ca = generate_ca(now).expect("CA");
        let serving = issue_serving(&ca, &sans()[..1], now).expect("serving certificate");
        let reason = reissue_reason(&ca, &serving, &sans(), now).expect("127.0.0.1 is missing");
        assert!(reason.contains("127.0.0.1"), "{reason}");
    }

    #[test]
    fn near_expiry_triggers_reissue() {
        let now = OffsetDateTime::now_utc();
        let ca = generate_ca(now).expect("CA");
        let serving = issue_serving(&ca, &sans(), now).expect("serving certificate");
        let later = now + SERVING_VALIDITY - Duration::days(29);
        let reason = reissue_reason(&ca, &serving, &sans(), later).expect("expires soon");
        assert!(reason.contains("expires"), "{reason}");
    }

    #[test]
    fn other_ca_triggers_reissue() {
        let now = OffsetDateTime::now_utc();
        let ca = generate_ca(now).expect("CA");
        let other = generate_ca(now).expect("other CA");
        let serving = issue_serving(&other, &sans(), now).expect("serving certificate");
        let reason = reissue_reason(&ca, &serving, &sans(), now).expect("wrong issuer");
        assert!(reason.contains("not signed by the CA"), "{reason}");
    }

    #[test]
    fn mismatched_key_triggers_reissue() {
        let now = OffsetDateTime::now_utc();
        let ca = generate_ca(now).expect("CA");
        let first = issue_serving(&ca, &sans(), now).expect("serving certificate");
        let second = issue_serving(&ca, &sans(), now).expect("serving certificate");
        let mixed = KeyedCertificate {
            cert_pem: first.cert_pem,
            key_pem: second.key_pem,
        };
        let reason = reissue_reason(&ca, &mixed, &sans(), now).expect("key mismatch");
        assert!(reason.contains("does not belong"), "{reason}");
    }

    #[test]
    fn ca_with_foreign_key_is_rejected() {
        let now = OffsetDateTime::now_utc();
        let ca = generate_ca(now).expect("CA");
        let other = generate_ca(now).expect("other CA");
        let mixed = KeyedCertificate {
            cert_pem: ca.cert_pem,
            key_pem: other.key_pem,
        };
        assert!(check_ca(&mixed, now).is_err());
    }

    #[test]
    fn debug_output_hides_private_key() {
        let ca = generate_ca(OffsetDateTime::now_utc()).expect("CA");
        let printed = format!("{ca:?}");
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
