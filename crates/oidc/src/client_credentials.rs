//! OAuth 2.0 client credentials grant (RFC 6749, section 4.4) with a token cache.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::token::RawTokenResponse;
use crate::{Error, Provider, Secret, http};

/// How long before expiry a cached token is replaced, so that it does not expire in flight.
const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// Settings of a confidential client, as read from a configuration file.
#[derive(Debug, Clone, Deserialize)]
pub struct ClientCredentialsConfig {
    /// The client id.
    pub client_id: String,
    /// The client secret, redacted in `Debug` output.
    pub client_secret: Secret,
    /// Space-separated scopes to request (none by default).
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug)]
struct CachedToken {
    access_token: Secret,
    refresh_at: Instant,
}

/// Gets access tokens for a confidential client and reuses each one until shortly before it
/// expires.
#[derive(Debug)]
pub struct ClientCredentials {
    provider: Arc<Provider>,
    config: ClientCredentialsConfig,
    refresh_margin: Duration,
    cached: Mutex<Option<CachedToken>>,
}

impl ClientCredentials {
    /// Creates a token source for the client in `config`.
    pub fn new(provider: Arc<Provider>, config: ClientCredentialsConfig) -> Self {
        Self {
            provider,
            config,
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            cached: Mutex::new(None),
        }
    }

    /// Sets how long before its expiry a cached token is replaced (default 30 s). For tokens
    /// that live less than twice the margin, half their lifetime is used instead.
    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// Returns the client id.
    pub fn client_id(&self) -> &str {
        &self.config.client_id
    }

    /// Returns a valid access token, from the cache or from the token endpoint.
    ///
    /// Concurrent callers wait for a single request instead of each sending one. A token
    /// without `expires_in` is not cached.
    pub async fn access_token(&self) -> Result<Secret, Error> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.access_token.clone());
        }

        let (access_token, expires_in) = self.request_token().await?;
        *cached = expires_in.map(|lifetime| CachedToken {
            access_token: access_token.clone(),
            refresh_at: Instant::now() + lifetime - self.margin_for(lifetime),
        });
        Ok(access_token)
    }

    /// Drops the cached token, for example after a resource server rejected it.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    fn margin_for(&self, lifetime: Duration) -> Duration {
        self.refresh_margin.min(lifetime / 2)
    }

    async fn request_token(&self) -> Result<(Secret, Option<Duration>), Error> {
        let metadata = self.provider.metadata().await?;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.config.client_id.as_str()),
            // client_secret_post (OpenID Connect Core, section 9): the secret travels in the
            // form body, which neither reqwest nor this crate logs.
            ("client_secret", self.config.client_secret.expose()),
        ];
        if let Some(scope) = &self.config.scope {
            form.push(("scope", scope.as_str()));
        }
        let raw: RawTokenResponse =
            http::post_form(self.provider.http(), &metadata.token_endpoint, &form).await?;
        let response = raw.into_response(&metadata.token_endpoint)?;
        tracing::debug!(
            client_id = %self.config.client_id,
            expires_in_s = response.expires_in.map(|lifetime| lifetime.as_secs()),
            "obtained client credentials token"
        );
        Ok((response.access_token, response.expires_in))
    }
}
