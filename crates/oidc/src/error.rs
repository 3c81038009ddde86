//! Errors of the OAuth 2.0 client, worded for the person at the terminal.

use std::path::PathBuf;

/// An error from discovery, a grant or token verification.
///
/// The device-flow variants ([`Error::AuthorizationPending`], [`Error::SlowDown`],
/// [`Error::ExpiredToken`], [`Error::AccessDenied`]) carry the RFC 8628 error codes of the
/// same names. [`crate::DeviceFlow::wait_for_token`] handles the first two itself and returns
/// only the others.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configured issuer URL cannot be used.
    #[error(
        "invalid issuer URL {value:?}: {reason}; expected an https URL such as \
         https://renku.example.org/auth/realms/Renku (plain http only on loopback)"
    )]
    InvalidIssuerUrl {
        /// The rejected value.
        value: String,
        /// The reason for the rejection.
        reason: String,
    },

    /// The HTTP client could not be built, for example because the TLS backend failed to
    /// initialise.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),

    /// No HTTP response arrived: connection refused, DNS failure, TLS failure or timeout.
    #[error(
        "identity provider unreachable at {url}: {reason}; check the network connection and \
         that the issuer URL is right, then try again"
    )]
    Unreachable {
        /// The URL that was requested.
        url: String,
        /// The transport error with its causes, such as "connection refused".
        reason: String,
        /// The underlying transport error.
        #[source]
        source: reqwest::Error,
    },

    /// The identity provider returned an unexpected HTTP status.
    #[error("identity provider returned HTTP {status} for {url}: {body}")]
    HttpStatus {
        /// The URL that was requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body, for diagnosis.
        body: String,
    },

    /// The response could not be parsed or lacks a required field.
    #[error("invalid response from identity provider at {url}: {reason}")]
    InvalidResponse {
        /// The URL that was requested.
        url: String,
        /// The problem found in the response.
        reason: String,
    },

    /// The discovery document names a different issuer than the one configured (OpenID
    /// Connect Discovery 1.0, section 4.3).
    #[error(
        "issuer mismatch: configured {expected:?} but the discovery document says {found:?}; \
         set the issuer URL to exactly {found:?} if that provider is the right one"
    )]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// The issuer in the discovery document.
        found: String,
    },

    /// The provider does not advertise a device authorization endpoint.
    #[error(
        "identity provider {issuer} does not support the device authorization grant (no \
         device_authorization_endpoint in its discovery document)"
    )]
    DeviceFlowUnsupported {
        /// The issuer URL.
        issuer: String,
    },

    /// `authorization_pending`: the user has not finished signing in yet.
    #[error("waiting for the sign-in to be approved in the browser")]
    AuthorizationPending,

    /// `slow_down`: the client polled faster than the provider allows.
    #[error("identity provider asked to poll less often")]
    SlowDown,

    /// `expired_token`: the device code expired before the user approved it.
    #[error(
        "the sign-in code expired before it was approved; run the command again for a new code"
    )]
    ExpiredToken,

    /// `access_denied`: the user declined the request in the browser.
    #[error("the sign-in request was denied in the browser")]
    AccessDenied,

    /// Any other OAuth 2.0 error response (RFC 6749, section 5.2), such as `invalid_client`.
    #[error("identity provider rejected the request at {url}: {error}{}", describe(.description))]
    OAuth {
        /// The URL that was requested.
        url: String,
        /// The `error` code.
        error: String,
        /// The `error_description`, if any.
        description: Option<String>,
    },

    /// A token failed verification.
    #[error("token rejected: {0}")]
    TokenRejected(#[from] TokenRejection),

    /// A secret file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    ReadSecret {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A secret file is empty.
    #[error("secret file {path} is empty; write the secret into it")]
    EmptySecret {
        /// The file.
        path: PathBuf,
    },
}

fn describe(description: &Option<String>) -> String {
    match description {
        Some(text) if !text.is_empty() => format!(" ({text})"),
        _ => String::new(),
    }
}

/// The reason a JSON Web Token failed verification.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenRejection {
    /// The token is not a well-formed JWS compact serialization.
    #[error("malformed token: {0}")]
    Malformed(String),

    /// The header names an algorithm this verifier does not accept.
    #[error("unsupported signing algorithm {0}; accepted: RS*, PS*, ES256, ES384, EdDSA")]
    UnsupportedAlgorithm(String),

    /// The header has no `kid`, and the key set has more than one signing key.
    #[error("token header has no key id (kid) and the provider publishes several keys")]
    MissingKeyId,

    /// No key in the provider's key set has the token's `kid`, even after a refresh.
    #[error("no signing key with id {0:?} in the provider's key set")]
    UnknownKey(String),

    /// The signature does not match the header and claims.
    #[error("invalid signature")]
    InvalidSignature,

    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,

    /// `nbf` is in the future (beyond the leeway).
    #[error("token not valid yet (nbf is in the future)")]
    NotYetValid,

    /// `iss` differs from the configured issuer.
    #[error("issuer {found:?} is not the configured issuer {expected:?}")]
    WrongIssuer {
        /// The configured issuer.
        expected: String,
        /// The token's `iss`.
        found: String,
    },

    /// Neither `aud` nor `azp` names the configured client.
    #[error(
        "token was issued for another client: expected {client_id:?} in aud {audience:?} or as \
         azp {authorized_party:?}"
    )]
    WrongAudience {
        /// The configured client id.
        client_id: String,
        /// The token's `aud`.
        audience: Vec<String>,
        /// The token's `azp`.
        authorized_party: Option<String>,
    },

    /// The `typ` claim marks another kind of token, such as an ID token (`ID`).
    #[error("not an access token: typ is {0:?}, expected \"Bearer\"")]
    NotAnAccessToken(String),

    /// A required claim (`sub`, `exp`, `iss`) is missing or has the wrong type.
    #[error("missing or invalid claim {0}")]
    MissingClaim(&'static str),
}
