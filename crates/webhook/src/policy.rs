//! SSH policy: the rule that selects the sessions that get the SSH sidecar.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Annotation on an AmaltheaSession that enables SSH under [`SshPolicy::Annotated`]. Only the
/// exact value `"true"` enables it.
pub const ENABLED_ANNOTATION: &str = "ssh.renku.io/enabled";

/// Rule that decides which sessions have SSH enabled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum SshPolicy {
    /// Every session.
    All,
    /// Sessions annotated with `ssh.renku.io/enabled: "true"`, and sessions that an SSHAccess
    /// refers to.
    #[default]
    Annotated,
    /// Only sessions that an SSHAccess refers to.
    Explicit,
}

impl SshPolicy {
    /// Returns the name used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Annotated => "annotated",
            Self::Explicit => "explicit",
        }
    }

    /// Returns whether the policy reads the annotations of AmaltheaSessions.
    pub fn reads_sessions(self) -> bool {
        self == Self::Annotated
    }

    /// Returns whether the policy reads SSHAccess objects.
    pub fn reads_ssh_accesses(self) -> bool {
        matches!(self, Self::Annotated | Self::Explicit)
    }

    /// Decides whether a session has SSH enabled, and returns what enabled it.
    pub fn evaluate(self, facts: SessionFacts) -> Option<EnabledBy> {
        match self {
            Self::All => Some(EnabledBy::PolicyAll),
            Self::Annotated if facts.annotated => Some(EnabledBy::Annotation),
            Self::Annotated | Self::Explicit if facts.has_ssh_access => Some(EnabledBy::SshAccess),
            Self::Annotated | Self::Explicit => None,
        }
    }
}

impl fmt::Display for SshPolicy {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Error for a policy name that is not `all`, `annotated` or `explicit`.
#[derive(Debug, thiserror::Error)]
#[error("invalid SSH policy {0:?}: use `all`, `annotated` or `explicit`")]
pub struct InvalidPolicy(pub String);

impl FromStr for SshPolicy {
    type Err = InvalidPolicy;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "all" => Ok(Self::All),
            "annotated" => Ok(Self::Annotated),
            "explicit" => Ok(Self::Explicit),
            other => Err(InvalidPolicy(other.to_owned())),
        }
    }
}

/// Facts the watch caches contain about one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionFacts {
    /// Whether the AmaltheaSession is in the cache.
    pub session_found: bool,
    /// Whether the AmaltheaSession carries `ssh.renku.io/enabled: "true"`.
    pub annotated: bool,
    /// Whether an SSHAccess in the session's namespace has `spec.sessionRef.name` set to the
    /// session.
    pub has_ssh_access: bool,
}

/// Cause that enabled SSH for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnabledBy {
    /// The policy is `all`.
    PolicyAll,
    /// The session's `ssh.renku.io/enabled` annotation.
    Annotation,
    /// An SSHAccess that refers to the session.
    SshAccess,
}

impl EnabledBy {
    /// Returns the value used in metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PolicyAll => "policy-all",
            Self::Annotation => "annotation",
            Self::SshAccess => "ssh-access",
        }
    }
}

/// Returns whether `annotations` contain `ssh.renku.io/enabled: "true"`.
pub fn has_enabled_annotation(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(ENABLED_ANNOTATION)
        .is_some_and(|value| value == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTHING: SessionFacts = SessionFacts {
        session_found: true,
        annotated: false,
        has_ssh_access: false,
    };
    const ANNOTATED: SessionFacts = SessionFacts {
        session_found: true,
        annotated: true,
        has_ssh_access: false,
    };
    const WITH_ACCESS: SessionFacts = SessionFacts {
        session_found: true,
        annotated: false,
        has_ssh_access: true,
    };

    #[test]
    fn policy_all_enables_every_session() {
        assert_eq!(SshPolicy::All.evaluate(NOTHING), Some(EnabledBy::PolicyAll));
        assert_eq!(
            SshPolicy::All.evaluate(SessionFacts::default()),
            Some(EnabledBy::PolicyAll)
        );
    }

    #[test]
    fn policy_annotated_accepts_annotation_or_access() {
        assert_eq!(SshPolicy::Annotated.evaluate(NOTHING), None);
        assert_eq!(
            SshPolicy::Annotated.evaluate(ANNOTATED),
            Some(EnabledBy::Annotation)
        );
        assert_eq!(
            SshPolicy::Annotated.evaluate(WITH_ACCESS),
            Some(EnabledBy::SshAccess)
        );
    }

    #[test]
    fn policy_explicit_ignores_annotation() {
        assert_eq!(SshPolicy::Explicit.evaluate(ANNOTATED), None);
        assert_eq!(
            SshPolicy::Explicit.evaluate(WITH_ACCESS),
            Some(EnabledBy::SshAccess)
        );
    }

    #[test]
    fn annotation_requires_exact_true() {
        let with =
            |value: &str| BTreeMap::from([(ENABLED_ANNOTATION.to_owned(), value.to_owned())]);
        assert!(has_enabled_annotation(&with("true")));
        assert!(!has_enabled_annotation(&with("True")));
        assert!(!has_enabled_annotation(&with("yes")));
        assert!(!has_enabled_annotation(&BTreeMap::new()));
    }

    #[test]
    fn policy_parses_and_rejects_names() {
        assert_eq!(
            "explicit".parse::<SshPolicy>().ok(),
            Some(SshPolicy::Explicit)
        );
        let error = "some".parse::<SshPolicy>().expect_err("not a policy");
        assert!(error.to_string().contains("\"some\""), "{error}");
        assert!(error.to_string().contains("`annotated`"), "{error}");
    }
}
