//! HTTP requests to the identity provider and the mapping of their failures to [`Error`].

use std::time::Duration;

use reqwest::{Client, Response, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// Time allowed to open a TCP (and TLS) connection to the identity provider.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed for a whole request, response body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Maximum number of characters of an unexpected response body put into an error message.
const BODY_EXCERPT_CHARS: usize = 200;

/// Builds the HTTP client used when the caller supplies none.
///
/// Redirects are not followed: OpenID Connect endpoints respond directly, and following a
/// redirect could send a form with a client secret or device code to another host.
pub(crate) fn default_client() -> Result<Client, Error> {
    Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("renku-ssh-oidc/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(Error::HttpClient)
}

/// Sends a GET request and parses the JSON body.
pub(crate) async fn get_json<T: DeserializeOwned>(http: &Client, url: &Url) -> Result<T, Error> {
    let response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|source| unreachable(url, source))?;
    parse_json(url, response, ErrorBody::Plain).await
}

/// Sends a form-encoded POST request (RFC 6749, section 4) and parses the JSON body.
///
/// An OAuth 2.0 error response becomes the matching [`Error`] variant, so callers can tell
/// `authorization_pending` from `access_denied` by type.
pub(crate) async fn post_form<T: DeserializeOwned>(
    http: &Client,
    url: &Url,
    form: &[(&str, &str)],
) -> Result<T, Error> {
    let response = http
        .post(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form)
        .send()
        .await
        .map_err(|source| unreachable(url, source))?;
    parse_json(url, response, ErrorBody::OAuth).await
}

/// How to read the body of a response with an error status.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ErrorBody {
    /// As text only. Keycloak responds to an unknown realm with `{"error": "..."}`, which is not
    /// an OAuth 2.0 error.
    Plain,
    /// As an OAuth 2.0 error response when it parses as one, because token and device
    /// authorization endpoints send those.
    OAuth,
}

fn unreachable(url: &Url, source: reqwest::Error) -> Error {
    let source = source.without_url();
    // reqwest's own message is generic ("error sending request"); the cause names the failure.
    let mut reason = source.to_string();
    let mut cause = std::error::Error::source(&source);
    while let Some(error) = cause {
        reason.push_str(": ");
        reason.push_str(&error.to_string());
        cause = error.source();
    }
    Error::Unreachable {
        url: url.to_string(),
        reason,
        source,
    }
}

/// Body of an OAuth 2.0 error response (RFC 6749, section 5.2).
#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
    error_description: Option<String>,
}

async fn parse_json<T: DeserializeOwned>(
    url: &Url,
    response: Response,
    error_body: ErrorBody,
) -> Result<T, Error> {
    let status = response.status();
    // A connection that drops while the body arrives is a transport failure like any other.
    let body = response
        .bytes()
        .await
        .map_err(|source| unreachable(url, source))?;

    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|error| Error::InvalidResponse {
            url: url.to_string(),
            reason: format!("cannot parse the JSON body: {error}"),
        });
    }
    if error_body == ErrorBody::OAuth
        && let Ok(oauth) = serde_json::from_slice::<OAuthErrorBody>(&body)
    {
        return Err(oauth_error(url, oauth));
    }
    let text = String::from_utf8_lossy(&body);
    Err(Error::HttpStatus {
        url: url.to_string(),
        status: status.as_u16(),
        body: text.chars().take(BODY_EXCERPT_CHARS).collect(),
    })
}

fn oauth_error(url: &Url, body: OAuthErrorBody) -> Error {
    match body.error.as_str() {
        "authorization_pending" => Error::AuthorizationPending,
        "slow_down" => Error::SlowDown,
        "expired_token" => Error::ExpiredToken,
        "access_denied" => Error::AccessDenied,
        _ => Error::OAuth {
            url: url.to_string(),
            error: body.error,
            description: body.error_description,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(error: &str) -> OAuthErrorBody {
        OAuthErrorBody {
            error: error.to_owned(),
            error_description: Some("details".to_owned()),
        }
    }

    #[test]
    fn device_flow_error_codes_map_to_variants() {
        let url = Url::parse("https://idp.example.org/token").expect("valid URL");
        assert!(matches!(
            oauth_error(&url, body("authorization_pending")),
            Error::AuthorizationPending
        ));
        assert!(matches!(
            oauth_error(&url, body("slow_down")),
            Error::SlowDown
        ));
        assert!(matches!(
            oauth_error(&url, body("expired_token")),
            Error::ExpiredToken
        ));
        assert!(matches!(
            oauth_error(&url, body("access_denied")),
            Error::AccessDenied
        ));
    }

    #[test]
    fn other_error_codes_keep_code_and_description() {
        let url = Url::parse("https://idp.example.org/token").expect("valid URL");
        let error = oauth_error(&url, body("invalid_client"));
        let message = error.to_string();
        assert!(matches!(error, Error::OAuth { .. }));
        assert!(message.contains("invalid_client"), "{message}");
        assert!(message.contains("(details)"), "{message}");
    }
}
