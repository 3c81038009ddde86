//! Self-managed certificates: a CA and a serving certificate kept in one Secret.
//!
//! Every replica runs [`ensure`] at start-up and then periodically. The first writer creates the
//! Secret; a replica whose create fails with AlreadyExists reads the winner's Secret instead, so
//! racing replicas converge on one CA. The CA is never replaced. The serving certificate is
//! reissued under the same CA when it lacks a name, nears expiry or does not match its key, with
//! a resourceVersion precondition so that concurrent reissues cannot overwrite each other.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use time::OffsetDateTime;

use super::TlsError;
use super::certs::{KeyedCertificate, check_ca, generate_ca, issue_serving, reissue_reason};
use crate::config::{ObjectName, SubjectAltName};

/// Secret data key of the CA certificate.
pub const CA_CERT_KEY: &str = "ca.crt";
/// Secret data key of the CA private key.
pub const CA_KEY_KEY: &str = "ca.key";
/// Secret data key of the serving certificate.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// Secret data key of the serving private key.
pub const TLS_KEY_KEY: &str = "tls.key";

/// Attempts before giving up when other writers keep changing the Secret.
const MAX_ATTEMPTS: usize = 5;

/// The CA and the serving certificate read from or written to the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfManagedCertificates {
    /// The CA; its certificate is the webhook's `caBundle`.
    pub ca: KeyedCertificate,
    /// The serving certificate, signed by the CA.
    pub serving: KeyedCertificate,
}

/// Reads the certificate Secret, creating it or reissuing its serving certificate for `sans`
/// when needed, and returns its certificates.
pub async fn ensure(
    client: &Client,
    secret_name: &ObjectName,
    sans: &[SubjectAltName],
) -> Result<SelfManagedCertificates, TlsError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &secret_name.namespace);
    for _ in 0..MAX_ATTEMPTS {
        let now = OffsetDateTime::now_utc();
        let existing = api
            .get_opt(&secret_name.name)
            .await
            .map_err(|source| TlsError::Kube {
                action: format!("read the certificate Secret {secret_name}"),
                source,
            })?;
        let Some(secret) = existing else {
            let certificates = generate(sans, now)?;
            let secret = new_secret(secret_name, &certificates);
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    tracing::info!(secret = %secret_name, "created the webhook CA and serving certificate");
                    return Ok(certificates);
                }
                Err(error) if is_conflict(&error) => {
                    tracing::info!(secret = %secret_name, "another replica created the certificate Secret; reading it");
                    continue;
                }
                Err(source) => {
                    let action = format!("create the certificate Secret {secret_name}");
                    return Err(TlsError::Kube { action, source });
                }
            }
        };

        let invalid = |reason: String| TlsError::InvalidSecret {
            secret: secret_name.to_string(),
            reason,
        };
        let ca = KeyedCertificate {
            cert_pem: data_text(&secret, CA_CERT_KEY).map_err(invalid)?,
            key_pem: data_text(&secret, CA_KEY_KEY).map_err(invalid)?,
        };
        check_ca(&ca, now).map_err(invalid)?;
        let reason = match usable_serving(&secret, &ca, sans, now) {
            Ok(serving) => return Ok(SelfManagedCertificates { ca, serving }),
            Err(reason) => reason,
        };

        tracing::info!(secret = %secret_name, %reason, "reissuing the webhook serving certificate");
        let serving = issue_serving(&ca, sans, now)?;
        let updated = with_serving(secret, &serving);
        match api
            .replace(&secret_name.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => return Ok(SelfManagedCertificates { ca, serving }),
            Err(error) if is_conflict(&error) => continue,
            Err(source) => {
                let action = format!("update the certificate Secret {secret_name}");
                return Err(TlsError::Kube { action, source });
            }
        }
    }
    Err(TlsError::TooManyConflicts {
        secret: secret_name.to_string(),
    })
}

/// Returns the Secret's serving certificate when it can stay, else why it must be reissued.
fn usable_serving(
    secret: &Secret,
    ca: &KeyedCertificate,
    sans: &[SubjectAltName],
    now: OffsetDateTime,
) -> Result<KeyedCertificate, String> {
    let serving = KeyedCertificate {
        cert_pem: data_text(secret, TLS_CERT_KEY)?,
        key_pem: data_text(secret, TLS_KEY_KEY)?,
    };
    match reissue_reason(ca, &serving, sans, now) {
        None => Ok(serving),
        Some(reason) => Err(reason),
    }
}

fn generate(
    sans: &[SubjectAltName],
    now: OffsetDateTime,
) -> Result<SelfManagedCertificates, TlsError> {
    let ca = generate_ca(now)?;
    let serving = issue_serving(&ca, sans, now)?;
    Ok(SelfManagedCertificates { ca, serving })
}

fn new_secret(name: &ObjectName, certificates: &SelfManagedCertificates) -> Secret {
    let labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "renku-ssh-webhook".to_owned(),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            "webhook-certificate".to_owned(),
        ),
    ]);
    let data = BTreeMap::from([
        (CA_CERT_KEY.to_owned(), bytes(&certificates.ca.cert_pem)),
        (CA_KEY_KEY.to_owned(), bytes(&certificates.ca.key_pem)),
        (
            TLS_CERT_KEY.to_owned(),
            bytes(&certificates.serving.cert_pem),
        ),
        (TLS_KEY_KEY.to_owned(), bytes(&certificates.serving.key_pem)),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.name.clone()),
            namespace: Some(name.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Default::default()
    }
}

fn with_serving(mut secret: Secret, serving: &KeyedCertificate) -> Secret {
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    data.insert(TLS_CERT_KEY.to_owned(), bytes(&serving.cert_pem));
    data.insert(TLS_KEY_KEY.to_owned(), bytes(&serving.key_pem));
    secret
}

fn bytes(text: &str) -> ByteString {
    ByteString(text.as_bytes().to_vec())
}

fn data_text(secret: &Secret, key: &str) -> Result<String, String> {
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .ok_or_else(|| format!("data key {key} is missing"))?;
    String::from_utf8(value.0.clone()).map_err(|_| format!("data key {key} is not PEM text"))
}

/// Returns whether the API server returned 409: AlreadyExists on create, Conflict on update.
fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}
