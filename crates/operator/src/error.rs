//! Error categories: the metric label and event grouping shared by every module's error type.

/// Coarse kind of a failure, used as the `category` label of the error metric. Object names
/// never become labels, so the metric's cardinality stays fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    /// A Kubernetes API request failed (network, authorisation, server error).
    Kubernetes,
    /// Another object already holds a name this operator needs.
    Conflict,
    /// A key source (Secret or user-preferences API) could not be read.
    KeySource,
    /// The session's host key could not be created or read.
    HostKey,
    /// The certificate authority Secret could not be created or read.
    CertificateAuthority,
    /// The object itself is invalid in a way the schema cannot catch.
    InvalidSpec,
    /// A key could not be generated or encoded.
    Crypto,
    /// Leader election failed.
    LeaderElection,
}

impl ErrorCategory {
    /// Returns the label value, as written to metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kubernetes => "Kubernetes",
            Self::Conflict => "Conflict",
            Self::KeySource => "KeySource",
            Self::HostKey => "HostKey",
            Self::CertificateAuthority => "CertificateAuthority",
            Self::InvalidSpec => "InvalidSpec",
            Self::Crypto => "Crypto",
            Self::LeaderElection => "LeaderElection",
        }
    }
}

/// An error that belongs to one [`ErrorCategory`].
pub trait Categorized {
    /// Returns the category of this error.
    fn category(&self) -> ErrorCategory;
}
