//! OpenID Connect Discovery 1.0: the provider's metadata document, fetched once and cached.

use std::net::IpAddr;
use std::sync::Arc;

use reqwest::{Client, Url};
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::{Error, http};

/// The fields of the discovery document (`/.well-known/openid-configuration`) that this crate
/// uses. Other fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    /// Issuer identifier, equal to the configured issuer URL.
    pub issuer: String,
    /// Token endpoint (RFC 6749, section 3.2).
    pub token_endpoint: Url,
    /// URL of the provider's JSON Web Key Set.
    pub jwks_uri: Url,
    /// Device authorization endpoint (RFC 8628, section 4), if the provider supports the grant.
    #[serde(default)]
    pub device_authorization_endpoint: Option<Url>,
}

/// An OpenID Connect provider, identified by its issuer URL.
///
/// The discovery document is fetched on first use and then kept for the life of the value.
#[derive(Debug)]
pub struct Provider {
    issuer: Url,
    http: Client,
    metadata: OnceCell<Arc<ProviderMetadata>>,
}

impl Provider {
    /// Creates a provider for `issuer_url`, such as `https://renku.example.org/auth/realms/Renku`.
    ///
    /// The URL must use https, except on loopback addresses (127.0.0.0/8, `::1`,
    /// `localhost`) where http is allowed for tests and local development.
    pub fn new(issuer_url: &str) -> Result<Self, Error> {
        Self::with_http_client(issuer_url, http::default_client()?)
    }

    /// Creates a provider that sends its requests through `http`.
    ///
    /// Configure that client not to follow redirects: a redirected POST could carry a client
    /// secret or device code to another host.
    pub fn with_http_client(issuer_url: &str, http: Client) -> Result<Self, Error> {
        let issuer = parse_issuer(issuer_url)?;
        Ok(Self {
            issuer,
            http,
            metadata: OnceCell::new(),
        })
    }

    /// Returns the issuer URL as configured, without a trailing slash.
    pub fn issuer(&self) -> &str {
        issuer_str(&self.issuer)
    }

    pub(crate) fn http(&self) -> &Client {
        &self.http
    }

    /// Returns the discovery document, fetching it on the first call.
    ///
    /// Fails when the document's `issuer` differs from the configured issuer or one of its
    /// endpoints is not an https (or loopback http) URL.
    pub async fn metadata(&self) -> Result<Arc<ProviderMetadata>, Error> {
        self.metadata
            .get_or_try_init(|| async { self.fetch_metadata().await.map(Arc::new) })
            .await
            .cloned()
    }

    async fn fetch_metadata(&self) -> Result<ProviderMetadata, Error> {
        let url = discovery_url(&self.issuer)?;
        tracing::debug!(%url, "fetching OpenID Connect discovery document");
        let metadata: ProviderMetadata = http::get_json(&self.http, &url).await?;

        if metadata.issuer != self.issuer() {
            return Err(Error::IssuerMismatch {
                expected: self.issuer().to_owned(),
                found: metadata.issuer,
            });
        }
        check_endpoint(&url, "token_endpoint", &metadata.token_endpoint)?;
        check_endpoint(&url, "jwks_uri", &metadata.jwks_uri)?;
        if let Some(endpoint) = &metadata.device_authorization_endpoint {
            check_endpoint(&url, "device_authorization_endpoint", endpoint)?;
        }
        tracing::debug!(issuer = %metadata.issuer, "discovery document loaded");
        Ok(metadata)
    }
}

fn issuer_str(issuer: &Url) -> &str {
    issuer.as_str().trim_end_matches('/')
}

fn parse_issuer(value: &str) -> Result<Url, Error> {
    let invalid = |reason: &str| Error::InvalidIssuerUrl {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let url =
        Url::parse(value.trim_end_matches('/')).map_err(|error| invalid(&error.to_string()))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("an issuer URL has no query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("an issuer URL has no user name or password"));
    }
    check_transport(&url).map_err(|reason| invalid(&reason))?;
    Ok(url)
}

fn discovery_url(issuer: &Url) -> Result<Url, Error> {
    let text = format!("{}/.well-known/openid-configuration", issuer_str(issuer));
    Url::parse(&text).map_err(|error| Error::InvalidIssuerUrl {
        value: issuer.to_string(),
        reason: error.to_string(),
    })
}

fn check_endpoint(document: &Url, field: &str, endpoint: &Url) -> Result<(), Error> {
    check_transport(endpoint).map_err(|reason| Error::InvalidResponse {
        url: document.to_string(),
        reason: format!("{field} {endpoint}: {reason}"),
    })
}

/// Accepts https everywhere and http only on loopback, where no one else can read the traffic.
fn check_transport(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err("plain http is allowed only on loopback addresses; use https".to_owned()),
        other => Err(format!("scheme {other:?} is not http or https")),
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // host_str() keeps the brackets of an IPv6 literal.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_accepts_https_and_loopback_http() {
        for value in [
            "https://renku.example.org/auth/realms/Renku",
            "http://127.0.0.1:8080/realms/Renku",
            "http://127.0.0.2/realms/Renku",
            "http://localhost:8080/realms/Renku",
            "http://[::1]:8080/realms/Renku",
        ] {
            assert!(parse_issuer(value).is_ok(), "{value} should be accepted");
        }
    }

    #[test]
    fn issuer_rejects_remote_http_and_other_schemes() {
        for value in [
            "http://renku.example.org/realms/Renku",
            "http://10.0.0.1/realms/Renku",
            "ftp://renku.example.org/realms/Renku",
            "not a url",
            "https://renku.example.org/realms/Renku?x=1",
            "https://user:pw@renku.example.org/realms/Renku",
        ] {
            let error = parse_issuer(value).expect_err(value);
            assert!(
                matches!(error, Error::InvalidIssuerUrl { .. }),
                "{value}: {error}"
            );
            assert!(error.to_string().contains(value), "{error}");
        }
    }

    #[test]
    fn issuer_trailing_slash_is_dropped() {
        let provider =
            Provider::new("https://renku.example.org/realms/Renku/").expect("valid issuer");
        assert_eq!(provider.issuer(), "https://renku.example.org/realms/Renku");
        let url = discovery_url(&provider.issuer).expect("valid discovery URL");
        assert_eq!(
            url.as_str(),
            "https://renku.example.org/realms/Renku/.well-known/openid-configuration"
        );
    }
}
