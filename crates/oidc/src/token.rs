//! Successful token endpoint responses (RFC 6749, section 5.1).

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::{Error, Secret};

/// Tokens issued by the token endpoint. `Debug` output shows no token.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    /// The access token, a JWT for Keycloak.
    pub access_token: Secret,
    /// The token type, `Bearer` for every provider this crate targets.
    pub token_type: String,
    /// Lifetime of the access token, if the provider states it.
    pub expires_in: Option<Duration>,
    /// Refresh token, if issued.
    pub refresh_token: Option<Secret>,
    /// OpenID Connect ID token, if scope `openid` was granted.
    pub id_token: Option<Secret>,
    /// Granted scopes, space-separated, if the provider states them.
    pub scope: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct RawTokenResponse {
    access_token: Secret,
    token_type: String,
    expires_in: Option<u64>,
    refresh_token: Option<Secret>,
    id_token: Option<Secret>,
    scope: Option<String>,
}

impl RawTokenResponse {
    /// Checks the token type and converts the response.
    pub(crate) fn into_response(self, endpoint: &Url) -> Result<TokenResponse, Error> {
        if !self.token_type.eq_ignore_ascii_case("bearer") {
            return Err(Error::InvalidResponse {
                url: endpoint.to_string(),
                reason: format!("token_type is {:?}, expected Bearer", self.token_type),
            });
        }
        if self.access_token.expose().is_empty() {
            return Err(Error::InvalidResponse {
                url: endpoint.to_string(),
                reason: "access_token is empty".to_owned(),
            });
        }
        Ok(TokenResponse {
            access_token: self.access_token,
            token_type: self.token_type,
            expires_in: self.expires_in.map(Duration::from_secs),
            refresh_token: self.refresh_token,
            id_token: self.id_token,
            scope: self.scope,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Url {
        Url::parse("https://idp.example.org/token").expect("valid URL")
    }

    #[test]
    fn debug_output_hides_tokens() {
        let raw: RawTokenResponse = serde_json::from_str(
            r#"{"access_token":"AT-SECRET","token_type":"Bearer","expires_in":300,
                "refresh_token":"RT-SECRET","id_token":"IT-SECRET","scope":"openid"}"#,
        )
        .expect("valid token response");
        let response = raw.into_response(&endpoint()).expect("bearer token");
        let debug = format!("{response:?}");
        for secret in ["AT-SECRET", "RT-SECRET", "IT-SECRET"] {
            assert!(!debug.contains(secret), "{secret} leaked into {debug}");
        }
        assert_eq!(response.expires_in, Some(Duration::from_secs(300)));
    }

    #[test]
    fn non_bearer_token_type_is_rejected() {
        let raw: RawTokenResponse =
            serde_json::from_str(r#"{"access_token":"x","token_type":"mac"}"#)
                .expect("valid token response");
        let error = raw
            .into_response(&endpoint())
            .expect_err("mac must be rejected");
        assert!(error.to_string().contains("\"mac\""), "{error}");
    }
}
