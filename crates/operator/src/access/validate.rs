//! Validate step: checks of the SSHAccess that the schema cannot express, and the merge of all
//! key sources into one validated key set (through the `authkeys` crate).

use api::SshAccess;
use api::ssh_access::{AcceptedKey, MAX_REJECTED_KEYS, RejectedKey, SshAccessStatus};
use authkeys::{KeyPolicy, KeySet, Source};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;

use super::read::{SourceContent, SourceInput, SourceKind};
use crate::error::{Categorized, ErrorCategory};
use crate::names::{ChildNames, MAX_SESSION_NAME_LENGTH};

/// Identity of a valid SSHAccess and the names of its children.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidAccess {
    /// Namespace of the SSHAccess and of every child.
    pub namespace: String,
    /// Name of the SSHAccess.
    pub name: String,
    /// Names of the children, derived from `spec.sessionRef.name`.
    pub names: ChildNames,
    /// Controller owner reference that every child carries.
    pub owner: OwnerReference,
}

/// An SSHAccess the operator cannot serve, reported in its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The object lacks metadata that every stored object has.
    #[error("the object has no metadata.{0}")]
    MissingMetadata(&'static str),
    /// The session name is too long for the derived Service name.
    #[error(
        "sessionRef.name {name:?} has {length} characters, but the Service `<session>-ssh` \
         allows at most {max}: use a session with a shorter name"
    )]
    SessionNameTooLong {
        /// The session name.
        name: String,
        /// Its length.
        length: usize,
        /// The maximum.
        max: usize,
    },
    /// The session name does not start with a letter, as Service names must.
    #[error(
        "sessionRef.name {0:?} starts with a digit, but the Service `<session>-ssh` must start \
         with a letter: use a session whose name starts with a letter"
    )]
    SessionNameStartsWithDigit(String),
    /// A `keysFrom` entry sets no source or both.
    #[error("keysFrom[{0}] must set exactly one of secretRef or userPreferences")]
    KeySource(usize),
}

impl Categorized for SpecError {
    fn category(&self) -> ErrorCategory {
        ErrorCategory::InvalidSpec
    }
}

/// Checks the parts of an SSHAccess that the schema does not, and derives its identity.
pub fn check(access: &SshAccess) -> Result<ValidAccess, SpecError> {
    let namespace = access
        .metadata
        .namespace
        .clone()
        .ok_or(SpecError::MissingMetadata("namespace"))?;
    let name = access
        .metadata
        .name
        .clone()
        .ok_or(SpecError::MissingMetadata("name"))?;
    let owner = access
        .controller_owner_ref(&())
        .ok_or(SpecError::MissingMetadata("uid"))?;
    let session = &access.spec.session_ref.name;
    if session.len() > MAX_SESSION_NAME_LENGTH {
        return Err(SpecError::SessionNameTooLong {
            name: session.clone(),
            length: session.len(),
            max: MAX_SESSION_NAME_LENGTH,
        });
    }
    if !session.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(SpecError::SessionNameStartsWithDigit(session.clone()));
    }
    if let Some(index) = access
        .spec
        .keys_from
        .iter()
        .position(|source| source.label().is_none())
    {
        return Err(SpecError::KeySource(index));
    }
    let mut owner = owner;
    owner.block_owner_deletion = Some(true);
    Ok(ValidAccess {
        namespace,
        name,
        names: ChildNames::for_session(session),
        owner,
    })
}

/// Returns `spec.expiresAt` when it has passed at `now`.
pub fn expired_at(access: &SshAccess, now: Timestamp) -> Option<Timestamp> {
    access
        .spec
        .expires_at
        .as_ref()
        .map(|time| time.0)
        .filter(|expiry| *expiry <= now)
}

/// A key source that could not be read, and how many of its keys were kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailingSource {
    /// Label of the source, as in `acceptedKeys[].source`.
    pub label: String,
    /// Kind of source.
    pub kind: SourceKind,
    /// Error message of the failed read.
    pub error: String,
    /// Number of keys still accepted from it (its last good keys).
    pub kept: usize,
}

/// The merged keys of one SSHAccess, ready for the keys Secret and the status.
#[derive(Clone, Debug, Default)]
pub struct KeyOutcome {
    /// Accepted keys for `status.acceptedKeys`.
    pub accepted: Vec<AcceptedKey>,
    /// The first rejected lines for `status.rejectedKeys`.
    pub rejected: Vec<RejectedKey>,
    /// Number of rejected lines, also those beyond `rejected`.
    pub rejected_total: usize,
    /// Sources that could not be read.
    pub failing: Vec<FailingSource>,
    /// Content of the `authorized_keys` file.
    pub authorized_keys: String,
    /// When the access expired, if it did; then there are no keys.
    pub expired_at: Option<Timestamp>,
}

/// The state written by the previous reconcile, from which a failing source's last good keys
/// are recovered.
#[derive(Clone, Copy, Debug, Default)]
pub struct PreviousKeys<'a> {
    /// The current status of the SSHAccess.
    pub status: Option<&'a SshAccessStatus>,
    /// The current `authorized_keys` of the keys Secret.
    pub authorized_keys: Option<&'a str>,
}

/// Merges every source into one key set.
///
/// A source without content (it failed and nothing of it is cached) contributes the keys that
/// the previous reconcile accepted from it: their fingerprints come from `status.acceptedKeys`
/// and their lines from the current `authorized_keys`. Its previous rejections are carried
/// over as well. So a failing source never removes keys and never adds any.
pub fn merge_keys(
    inputs: &[SourceInput],
    previous: PreviousKeys<'_>,
    policy: &KeyPolicy,
) -> KeyOutcome {
    let previous_set = previous
        .authorized_keys
        .map(|text| authkeys::read_authorized_keys("previous", text, policy))
        .unwrap_or_default();
    let mut sources = Vec::with_capacity(inputs.len());
    let mut carried_rejections = Vec::new();
    for input in inputs {
        match &input.content {
            Some(SourceContent::Text(text)) => {
                sources.push(Source::text(&input.label, text.as_str()))
            }
            Some(SourceContent::Values(values)) => {
                sources.push(Source::values(
                    &input.label,
                    values.iter().map(String::as_str),
                ));
            }
            None => {
                sources.push(last_good_source(&input.label, previous, &previous_set));
                carried_rejections.extend(
                    previous
                        .status
                        .into_iter()
                        .flat_map(|status| &status.rejected_keys)
                        .filter(|rejected| rejected.source == input.label)
                        .cloned(),
                );
            }
        }
    }
    let set = authkeys::merge_sources(&sources, policy);
    outcome(inputs, set, carried_rejections)
}

/// Builds the replacement source for a failing one: its previously accepted lines.
fn last_good_source(label: &str, previous: PreviousKeys<'_>, previous_set: &KeySet) -> Source {
    let lines: Vec<String> = previous
        .status
        .into_iter()
        .flat_map(|status| &status.accepted_keys)
        .filter(|accepted| accepted.source == label)
        .filter_map(|accepted| previous_set.find_by_fingerprint(&accepted.fingerprint))
        .map(|found| found.key.to_string())
        .collect();
    Source::values(label, lines)
}

fn outcome(inputs: &[SourceInput], set: KeySet, carried: Vec<RejectedKey>) -> KeyOutcome {
    let accepted: Vec<AcceptedKey> = set
        .accepted
        .iter()
        .map(|accepted| AcceptedKey {
            fingerprint: accepted.key.fingerprint().to_owned(),
            key_type: accepted.key.algorithm().to_owned(),
            comment: accepted.key.comment().map(str::to_owned),
            source: accepted.origin.source.clone(),
        })
        .collect();
    let mut all_rejected: Vec<RejectedKey> = set
        .rejected
        .iter()
        .map(|rejected| RejectedKey {
            source: rejected.origin.source.clone(),
            line: i32::try_from(rejected.origin.line).unwrap_or(i32::MAX),
            reason: format!("{}: {}", rejected.reason.code(), rejected.reason),
            preview: Some(RejectedKey::preview_of(&rejected.preview)),
        })
        .collect();
    all_rejected.extend(carried);
    let rejected_total = all_rejected.len();
    all_rejected.truncate(MAX_REJECTED_KEYS);
    let failing = inputs
        .iter()
        .filter_map(|input| {
            let error = input.error.clone()?;
            let kept = accepted
                .iter()
                .filter(|key| key.source == input.label)
                .count();
            Some(FailingSource {
                label: input.label.clone(),
                kind: input.kind,
                error,
                kept,
            })
        })
        .collect();
    KeyOutcome {
        accepted,
        rejected: all_rejected,
        rejected_total,
        failing,
        authorized_keys: set.render(),
        expired_at: None,
    }
}

/// Returns the key outcome of an expired access: no keys, and a file with a comment on why.
pub fn expired_keys(at: Timestamp) -> KeyOutcome {
    KeyOutcome {
        authorized_keys: format!(
            "# This SSH access expired at {at}; no key is accepted. Set a later \
             spec.expiresAt on the SSHAccess to restore access.\n"
        ),
        expired_at: Some(at),
        ..KeyOutcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::ssh_access::{INLINE_KEYS_SOURCE, SshAccessSpec};

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJizIKK5bobCr36s3PJEKDRGCNolQVrobgYIvmI6VSEw laptop";

    fn access(yaml: &str) -> SshAccess {
        let mut access: SshAccess = serde_yaml::from_str(yaml).expect("fixture parses");
        access.metadata.uid = Some("0a1b2c".to_owned());
        access
    }

    fn minimal(session: &str) -> SshAccess {
        access(&format!(
            "apiVersion: ssh.renku.io/v1alpha1\nkind: SSHAccess\nmetadata: {{name: a, namespace: ns}}\n\
             spec: {{sessionRef: {{name: {session}}}, user: u}}\n"
        ))
    }

    fn inline(values: &[&str]) -> SourceInput {
        SourceInput {
            label: INLINE_KEYS_SOURCE.to_owned(),
            kind: SourceKind::Inline,
            content: Some(SourceContent::Values(
                values.iter().map(|v| (*v).to_owned()).collect(),
            )),
            error: None,
        }
    }

    #[test]
    fn check_derives_names_and_owner() {
        let valid = check(&minimal("alice-1")).expect("valid");

        assert_eq!(valid.names.keys_secret, "alice-1-ssh-keys");
        assert_eq!(valid.owner.kind, "SSHAccess");
        assert_eq!(valid.owner.api_version, "ssh.renku.io/v1alpha1");
        assert_eq!(valid.owner.uid, "0a1b2c");
        assert_eq!(valid.owner.controller, Some(true));
        assert_eq!(valid.owner.block_owner_deletion, Some(true));
    }

    #[test]
    fn check_rejects_unusable_session_names() {
        let long = "a".repeat(MAX_SESSION_NAME_LENGTH + 1);
        assert!(matches!(
            check(&minimal(&long)),
            Err(SpecError::SessionNameTooLong { .. })
        ));
        assert!(matches!(
            check(&minimal("1abc")),
            Err(SpecError::SessionNameStartsWithDigit(_))
        ));
    }

    #[test]
    fn check_rejects_empty_key_source() {
        let mut object = minimal("alice");
        object.spec = SshAccessSpec {
            keys_from: vec![api::ssh_access::KeySource {
                secret_ref: None,
                user_preferences: None,
            }],
            ..object.spec
        };
        assert_eq!(check(&object), Err(SpecError::KeySource(0)));
    }

    #[test]
    fn merge_reports_accepted_and_rejected() {
        let outcome = merge_keys(
            &[inline(&[
                ED25519,
                "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
                ED25519,
            ])],
            PreviousKeys::default(),
            &KeyPolicy::default(),
        );

        assert_eq!(outcome.accepted.len(), 1);
        assert_eq!(outcome.accepted[0].source, INLINE_KEYS_SOURCE);
        assert_eq!(outcome.accepted[0].comment.as_deref(), Some("laptop"));
        assert_eq!(outcome.rejected_total, 1);
        assert_eq!(outcome.rejected[0].line, 2);
        assert!(
            outcome.rejected[0].reason.starts_with("DsaNotSupported: "),
            "{:?}",
            outcome.rejected
        );
        assert!(outcome.authorized_keys.contains(ED25519));
        assert!(outcome.failing.is_empty());
    }

    #[test]
    fn failing_source_keeps_previous_keys() {
        let good = merge_keys(
            &[SourceInput {
                label: "secret:team/authorized_keys".to_owned(),
                kind: SourceKind::Secret,
                content: Some(SourceContent::Text(format!(
                    "{ED25519}\nssh-rsa AAAA bad\n"
                ))),
                error: None,
            }],
            PreviousKeys::default(),
            &KeyPolicy::default(),
        );
        let mut status = SshAccessStatus::default();
        status.set_accepted_keys(good.accepted.clone());
        status.rejected_keys = good.rejected.clone();

        let failing = merge_keys(
            &[
                inline(&[]),
                SourceInput {
                    label: "secret:team/authorized_keys".to_owned(),
                    kind: SourceKind::Secret,
                    content: None,
                    error: Some("Secret team not found".to_owned()),
                },
            ],
            PreviousKeys {
                status: Some(&status),
                authorized_keys: Some(&good.authorized_keys),
            },
            &KeyPolicy::default(),
        );

        assert_eq!(failing.accepted, good.accepted);
        assert_eq!(failing.rejected, good.rejected);
        assert_eq!(failing.authorized_keys, good.authorized_keys);
        assert_eq!(failing.failing.len(), 1);
        assert_eq!(failing.failing[0].kept, 1);
        assert_eq!(failing.failing[0].error, "Secret team not found");
    }

    #[test]
    fn failing_source_without_history_adds_nothing() {
        let outcome = merge_keys(
            &[SourceInput {
                label: "userPreferences".to_owned(),
                kind: SourceKind::UserPreferences,
                content: None,
                error: Some("unreachable".to_owned()),
            }],
            PreviousKeys::default(),
            &KeyPolicy::default(),
        );

        assert!(outcome.accepted.is_empty());
        assert_eq!(outcome.failing[0].kept, 0);
    }

    #[test]
    fn rejected_list_is_capped() {
        let bad: Vec<String> = (0..MAX_REJECTED_KEYS + 5)
            .map(|i| format!("ssh-foo {i}"))
            .collect();
        let values: Vec<&str> = bad.iter().map(String::as_str).collect();

        let outcome = merge_keys(
            &[inline(&values)],
            PreviousKeys::default(),
            &KeyPolicy::default(),
        );

        assert_eq!(outcome.rejected.len(), MAX_REJECTED_KEYS);
        assert_eq!(outcome.rejected_total, MAX_REJECTED_KEYS + 5);
    }

    #[test]
    fn expired_outcome_has_no_keys() {
        let at: Timestamp = "2030-01-01T00:00:00Z".parse().expect("timestamp");
        let outcome = expired_keys(at);

        assert!(outcome.accepted.is_empty());
        assert!(
            outcome
                .authorized_keys
                .starts_with("# This SSH access expired at 2030-01-01")
        );
        assert_eq!(
            authkeys::read_authorized_keys("x", &outcome.authorized_keys, &KeyPolicy::default())
                .accepted
                .len(),
            0
        );
    }

    #[test]
    fn expiry_compares_with_now() {
        let mut object = minimal("alice");
        let now: Timestamp = "2030-01-01T00:00:00Z".parse().expect("timestamp");
        assert_eq!(expired_at(&object, now), None);

        object.spec.expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2029-12-31T23:59:59Z".parse().expect("timestamp"),
        ));
        assert!(expired_at(&object, now).is_some());

        object.spec.expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2030-01-01T00:00:01Z".parse().expect("timestamp"),
        ));
        assert_eq!(expired_at(&object, now), None);
    }
}
