//! HTTP client of the user-preferences API: `GET` one user's keys with a bearer token and
//! `If-None-Match`, and map each status code to an outcome (see
//! `docs/user-preferences-api.md`).

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, ETAG, IF_NONE_MATCH};
use serde::Deserialize;

use super::token::TokenSource;
use crate::config::UrlTemplate;

/// Maximum size of one response body in bytes: 100 keys of 16 KiB each fit easily.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// One key item of the API's response. Only `public_key` is used; the other fields are kept
/// for logs and the contract test.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct UserKey {
    /// Identifier of the key in the user-preferences service (a string or a number).
    #[serde(default)]
    pub id: serde_json::Value,
    /// Name the user gave the key.
    #[serde(default)]
    pub name: Option<String>,
    /// Key type as the service reports it.
    #[serde(default)]
    pub key_type: Option<String>,
    /// Fingerprint as the service reports it; the operator computes its own.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Creation time as the service reports it.
    #[serde(default)]
    pub created_at: Option<String>,
    /// The `authorized_keys` line.
    pub public_key: String,
}

/// Result of a successful request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// `200 OK`: the user's keys, and the entity tag to send next time.
    Keys {
        /// The keys in response order.
        keys: Vec<UserKey>,
        /// The `ETag` response header.
        etag: Option<String>,
    },
    /// `304 Not Modified`: the keys are the ones fetched with the entity tag that was sent.
    NotModified,
    /// `404 Not Found`: the user has no keys.
    NoKeys,
}

/// A failed request. The last good keys stay in use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The user's subject does not form a valid URL with the template.
    #[error("cannot build the request URL for user {user:?}: {reason}")]
    InvalidUrl {
        /// The user.
        user: String,
        /// Reason the URL could not be built.
        reason: String,
    },
    /// No access token could be obtained.
    #[error("{0}")]
    Token(String),
    /// No response: connection refused, DNS or TLS failure.
    #[error("user-preferences API unreachable at {url}: {reason}")]
    Unreachable {
        /// Requested URL.
        url: String,
        /// Transport error.
        reason: String,
    },
    /// No response within the request timeout.
    #[error("user-preferences API at {url} did not respond within {timeout:?}")]
    TimedOut {
        /// Requested URL.
        url: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// `401` or `403`, also with a freshly requested token.
    #[error(
        "user-preferences API rejected the operator's token with HTTP {status} at {url}: check \
         the operator's client id, secret and the API's audience settings"
    )]
    Unauthorized {
        /// Requested URL.
        url: String,
        /// Status code.
        status: u16,
    },
    /// A `5xx` status.
    #[error("user-preferences API failed with HTTP {status} at {url}")]
    ServerError {
        /// Requested URL.
        url: String,
        /// Status code.
        status: u16,
    },
    /// Any other status.
    #[error("user-preferences API returned the unexpected HTTP {status} at {url}")]
    UnexpectedStatus {
        /// Requested URL.
        url: String,
        /// Status code.
        status: u16,
    },
    /// The body is not the documented JSON.
    #[error("invalid response from the user-preferences API at {url}: {reason}")]
    InvalidResponse {
        /// Requested URL.
        url: String,
        /// Reason the body is invalid.
        reason: String,
    },
}

impl FetchError {
    /// Returns a fixed word for the request metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::InvalidUrl { .. } => "invalid_url",
            Self::Token(_) => "token_error",
            Self::Unreachable { .. } => "unreachable",
            Self::TimedOut { .. } => "timed_out",
            Self::Unauthorized { .. } => "unauthorized",
            Self::ServerError { .. } => "server_error",
            Self::UnexpectedStatus { .. } => "unexpected_status",
            Self::InvalidResponse { .. } => "invalid_response",
        }
    }
}

/// Client of the user-preferences API.
pub struct UserPreferencesClient {
    http: reqwest::Client,
    url: UrlTemplate,
    tokens: Arc<dyn TokenSource>,
    timeout: Duration,
}

impl UserPreferencesClient {
    /// Creates a client for the URL template, with a per-request `timeout`.
    pub fn new(
        url: UrlTemplate,
        tokens: Arc<dyn TokenSource>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("renku-ssh-operator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            url,
            tokens,
            timeout,
        })
    }

    /// Fetches `user`'s keys, sending `etag` as `If-None-Match` when given.
    ///
    /// A `401` or `403` drops the cached token and retries once with a new one, because the
    /// token may have been revoked before it expired.
    pub async fn fetch(&self, user: &str, etag: Option<&str>) -> Result<Fetched, FetchError> {
        let url = self
            .url
            .for_user(user)
            .map_err(|error| FetchError::InvalidUrl {
                user: user.to_owned(),
                reason: error.to_string(),
            })?;
        let mut retried = false;
        loop {
            let token = self
                .tokens
                .access_token()
                .await
                .map_err(|error| FetchError::Token(error.to_string()))?;
            let mut request = self
                .http
                .get(url.clone())
                .bearer_auth(token.expose())
                .header(ACCEPT, "application/json");
            if let Some(etag) = etag {
                request = request.header(IF_NONE_MATCH, etag);
            }
            let response = request
                .send()
                .await
                .map_err(|error| self.transport_error(&url, error))?;
            let status = response.status();
            match status {
                StatusCode::OK => return self.read_keys(&url, response).await,
                StatusCode::NOT_MODIFIED => return Ok(Fetched::NotModified),
                StatusCode::NOT_FOUND => return Ok(Fetched::NoKeys),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if !retried => {
                    tracing::debug!(%url, status = status.as_u16(),
                        "user-preferences API rejected the token; requesting a new one");
                    self.tokens.invalidate().await;
                    retried = true;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(FetchError::Unauthorized {
                        url: url.to_string(),
                        status: status.as_u16(),
                    });
                }
                _ if status.is_server_error() => {
                    return Err(FetchError::ServerError {
                        url: url.to_string(),
                        status: status.as_u16(),
                    });
                }
                _ => {
                    return Err(FetchError::UnexpectedStatus {
                        url: url.to_string(),
                        status: status.as_u16(),
                    });
                }
            }
        }
    }

    fn transport_error(&self, url: &url::Url, error: reqwest::Error) -> FetchError {
        if error.is_timeout() {
            FetchError::TimedOut {
                url: url.to_string(),
                timeout: self.timeout,
            }
        } else {
            FetchError::Unreachable {
                url: url.to_string(),
                reason: error_chain(&error),
            }
        }
    }

    async fn read_keys(
        &self,
        url: &url::Url,
        mut response: reqwest::Response,
    ) -> Result<Fetched, FetchError> {
        let invalid = |reason: String| FetchError::InvalidResponse {
            url: url.to_string(),
            reason,
        };
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| self.transport_error(url, error))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(invalid(format!(
                    "body is larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let keys = parse_keys(&body).map_err(invalid)?;
        Ok(Fetched::Keys { keys, etag })
    }
}

/// Parses a response body: a JSON array of key objects, each with a string `public_key`.
pub fn parse_keys(body: &[u8]) -> Result<Vec<UserKey>, String> {
    let items: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|error| format!("expected a JSON array of keys: {error}"))?;
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            serde_json::from_value(item)
                .map_err(|error| format!("item {} is not a key object: {error}", index + 1))
        })
        .collect()
}

/// Joins an error with its sources, as reqwest hides the cause behind "error sending request".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keys_reads_documented_items() {
        let body = br#"[
            {"id": "01J", "name": "laptop", "key_type": "ssh-ed25519",
             "fingerprint": "SHA256:abc", "created_at": "2025-01-02T03:04:05Z",
             "public_key": "ssh-ed25519 AAAA laptop"},
            {"id": 7, "public_key": "ssh-rsa AAAA"}
        ]"#;

        let keys = parse_keys(body).expect("valid body");

        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name.as_deref(), Some("laptop"));
        assert_eq!(keys[0].public_key, "ssh-ed25519 AAAA laptop");
        assert_eq!(keys[1].id, serde_json::json!(7));
        assert_eq!(keys[1].key_type, None);
    }

    #[test]
    fn parse_keys_names_bad_item() {
        let error = parse_keys(br#"[{"public_key": "a"}, {"name": "no key"}]"#).expect_err("bad");
        assert!(error.contains("item 2"), "{error}");
    }

    #[test]
    fn parse_keys_needs_array() {
        let error = parse_keys(br#"{"keys": []}"#).expect_err("object");
        assert!(error.contains("JSON array"), "{error}");
    }
}
