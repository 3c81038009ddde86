//! The operator's access token for the user-preferences API: an OAuth 2.0 client credentials
//! grant, either through OpenID Connect discovery (the `oidc` crate) or at a fixed token
//! endpoint.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use oidc::Secret;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use crate::config::{TokenConfig, TokenEndpoint};

/// Maximum time before expiry at which a cached token is replaced.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// Maximum size of a token response body in bytes.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// Source of bearer tokens. Implementations cache tokens until shortly before they expire.
pub trait TokenSource: Send + Sync {
    /// Returns a valid access token.
    fn access_token(&self) -> BoxFuture<'_, Result<Secret, TokenError>>;
    /// Drops the cached token, after the API rejected it.
    fn invalidate(&self) -> BoxFuture<'_, ()>;
}

/// Failure to obtain an access token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The identity provider or token endpoint failed; the message describes the failure.
    #[error("failed to obtain an access token: {0}")]
    Request(String),
}

/// Builds the token source described by `config`; requests time out after `timeout`.
pub fn token_source(
    config: &TokenConfig,
    timeout: Duration,
) -> Result<Arc<dyn TokenSource>, TokenError> {
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("renku-ssh-operator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| TokenError::Request(error.to_string()))?;
    match &config.endpoint {
        TokenEndpoint::Issuer(issuer) => {
            let provider = oidc::Provider::with_http_client(issuer, http)
                .map_err(|error| TokenError::Request(error.to_string()))?;
            let credentials = oidc::ClientCredentials::new(
                Arc::new(provider),
                oidc::ClientCredentialsConfig {
                    client_id: config.client_id.clone(),
                    client_secret: config.client_secret.clone(),
                    scope: None,
                },
            );
            Ok(Arc::new(IssuerTokenSource(credentials)))
        }
        TokenEndpoint::Url(endpoint) => Ok(Arc::new(EndpointTokenSource {
            http,
            endpoint: endpoint.clone(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            cached: Mutex::new(None),
        })),
    }
}

/// Client credentials through OpenID Connect discovery.
struct IssuerTokenSource(oidc::ClientCredentials);

impl TokenSource for IssuerTokenSource {
    fn access_token(&self) -> BoxFuture<'_, Result<Secret, TokenError>> {
        Box::pin(async move {
            self.0
                .access_token()
                .await
                .map_err(|error| TokenError::Request(error.to_string()))
        })
    }

    fn invalidate(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.invalidate())
    }
}

/// Client credentials at a fixed token endpoint (RFC 6749, section 4.4).
struct EndpointTokenSource {
    http: reqwest::Client,
    endpoint: Url,
    client_id: String,
    client_secret: Secret,
    cached: Mutex<Option<(Secret, Instant)>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl EndpointTokenSource {
    async fn request(&self) -> Result<(Secret, Option<Duration>), TokenError> {
        let failed = |reason: String| {
            TokenError::Request(format!("token endpoint {}: {reason}", self.endpoint))
        };
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
        ];
        let response = self
            .http
            .post(self.endpoint.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|error| failed(error.to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| failed(error.to_string()))?;
        if body.len() > MAX_TOKEN_RESPONSE_BYTES {
            return Err(failed(format!(
                "response is larger than {MAX_TOKEN_RESPONSE_BYTES} bytes"
            )));
        }
        if !status.is_success() {
            // An OAuth 2.0 error body names the error (`invalid_client`, ...) and contains no token.
            let excerpt: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(failed(format!("HTTP {status}: {excerpt}")));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|error| failed(format!("invalid token response: {error}")))?;
        Ok((
            Secret::new(parsed.access_token),
            parsed.expires_in.map(Duration::from_secs),
        ))
    }
}

impl TokenSource for EndpointTokenSource {
    fn access_token(&self) -> BoxFuture<'_, Result<Secret, TokenError>> {
        Box::pin(async move {
            let mut cached = self.cached.lock().await;
            if let Some((token, refresh_at)) = cached.as_ref()
                && Instant::now() < *refresh_at
            {
                return Ok(token.clone());
            }
            let (token, lifetime) = self.request().await?;
            *cached = lifetime.map(|lifetime| {
                let margin = REFRESH_MARGIN.min(lifetime / 2);
                (token.clone(), Instant::now() + lifetime - margin)
            });
            Ok(token)
        })
    }

    fn invalidate(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            *self.cached.lock().await = None;
        })
    }
}
