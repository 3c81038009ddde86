//! Verification of JWT access tokens against the provider's JSON Web Key Set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{Error, Provider, TokenRejection, http};

/// Clock skew tolerated on `exp` and `nbf`.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Minimum time between two key set downloads triggered by unknown key ids, so that tokens
/// with made-up `kid`s cannot make the verifier hammer the provider.
const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Asymmetric algorithms accepted in the JWT header. HMAC algorithms are excluded: with them,
/// a forger could sign using the public key as the shared secret.
// NOTE: ES512, which Keycloak offers, is missing because jsonwebtoken 9 cannot verify it. A
// realm whose active signing key is ES512 gets every token rejected as UnsupportedAlgorithm.
const ACCEPTED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Facts from a token that passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `sub`: the user's (or service account's) stable id at the provider.
    pub subject: String,
    /// `exp` as a point in time.
    pub expires_at: SystemTime,
    /// `iss`.
    pub issuer: String,
    /// `aud`, as a list even when the token has a single string.
    pub audience: Vec<String>,
    /// `azp`, the client the token was issued to.
    pub authorized_party: Option<String>,
    /// `preferred_username`, if present. Use it for display only, since users may change it.
    pub preferred_username: Option<String>,
}

/// The claims this verifier reads. `jsonwebtoken` checks `exp` and `nbf` itself.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
    iss: Option<String>,
    #[serde(default)]
    aud: Audience,
    azp: Option<String>,
    preferred_username: Option<String>,
    /// Keycloak's token type claim: `Bearer` for access tokens, `ID` for ID tokens.
    typ: Option<String>,
}

/// `aud` is a string or an array of strings (RFC 7519, section 4.1.3).
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::None => Vec::new(),
            Self::One(value) => vec![value],
            Self::Many(values) => values,
        }
    }
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Jwk>,
    /// Keys without a `kid`, usable only when the token has none either.
    anonymous: Vec<Jwk>,
    fetched_at: Option<Instant>,
}

/// Verifies access tokens issued by one provider for one client.
///
/// A token passes when all of these hold:
/// - its signature checks out against a key from the provider's JWKS;
/// - `iss` equals the issuer URL;
/// - `aud` contains the client id, or `azp` equals it;
/// - `exp`, and `nbf` if present, hold within the leeway;
/// - a `typ` claim, if present, is `Bearer`.
///
/// The key set is cached and downloaded again when a token names an unknown key id.
pub struct TokenVerifier {
    provider: Arc<Provider>,
    client_id: String,
    leeway: Duration,
    min_refresh_interval: Duration,
    keys: Mutex<KeyCache>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.provider.issuer())
            .field("client_id", &self.client_id)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Creates a verifier for tokens that `provider` issued to `client_id`.
    pub fn new(provider: Arc<Provider>, client_id: impl Into<String>) -> Self {
        Self {
            provider,
            client_id: client_id.into(),
            leeway: DEFAULT_LEEWAY,
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            keys: Mutex::new(KeyCache::default()),
        }
    }

    /// Sets the tolerated clock skew on `exp` and `nbf` (default 30 s).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Sets the minimum time between key set downloads caused by unknown key ids (default
    /// 10 s). Within it, a token with an unknown `kid` fails without a download.
    pub fn with_min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh_interval = interval;
        self
    }

    /// Verifies `token` and returns its subject and expiry.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, Error> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| TokenRejection::Malformed(error.to_string()))?;
        if !ACCEPTED_ALGORITHMS.contains(&header.alg) {
            return Err(TokenRejection::UnsupportedAlgorithm(format!("{:?}", header.alg)).into());
        }
        let jwk = self.find_key(header.kid.as_deref(), header.alg).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|error| {
            TokenRejection::Malformed(format!("unusable key in the provider's key set: {error}"))
        })?;

        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        // Audience and issuer are checked below, to report the values in the error.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|error| rejection_for(error.kind()))?
            .claims;

        let verified = self.check_claims(claims)?;
        tracing::debug!(subject = %verified.subject, client_id = %self.client_id, "token verified");
        Ok(verified)
    }

    fn check_claims(&self, claims: Claims) -> Result<VerifiedToken, TokenRejection> {
        let issuer = claims.iss.ok_or(TokenRejection::MissingClaim("iss"))?;
        if issuer != self.provider.issuer() {
            return Err(TokenRejection::WrongIssuer {
                expected: self.provider.issuer().to_owned(),
                found: issuer,
            });
        }

        // An ID token has the same issuer, audience and signature as an access token, so only
        // this claim keeps it from being accepted as a bearer credential.
        if let Some(typ) = claims.typ
            && !typ.eq_ignore_ascii_case("bearer")
        {
            return Err(TokenRejection::NotAnAccessToken(typ));
        }

        let audience = claims.aud.into_vec();
        let for_this_client = audience.contains(&self.client_id)
            || claims.azp.as_deref() == Some(self.client_id.as_str());
        if !for_this_client {
            return Err(TokenRejection::WrongAudience {
                client_id: self.client_id.clone(),
                audience,
                authorized_party: claims.azp,
            });
        }

        let subject = claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or(TokenRejection::MissingClaim("sub"))?;
        let exp = claims.exp.ok_or(TokenRejection::MissingClaim("exp"))?;
        Ok(VerifiedToken {
            subject,
            expires_at: UNIX_EPOCH + Duration::from_secs(exp),
            issuer,
            audience,
            authorized_party: claims.azp,
            preferred_username: claims.preferred_username,
        })
    }

    /// Finds the key for `kid`, downloading the key set when it is not cached yet or does not
    /// contain `kid`.
    async fn find_key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Jwk, Error> {
        let mut cache = self.keys.lock().await;
        if cache.fetched_at.is_none() {
            self.refresh(&mut cache).await?;
        }
        if let Some(jwk) = lookup(&cache, kid, alg)? {
            return Ok(jwk);
        }
        let recently = cache
            .fetched_at
            .is_some_and(|fetched| fetched.elapsed() < self.min_refresh_interval);
        if !recently {
            tracing::info!(
                kid,
                "token names an unknown key; downloading the key set again"
            );
            self.refresh(&mut cache).await?;
            if let Some(jwk) = lookup(&cache, kid, alg)? {
                return Ok(jwk);
            }
        }
        Err(TokenRejection::UnknownKey(kid.unwrap_or_default().to_owned()).into())
    }

    async fn refresh(&self, cache: &mut KeyCache) -> Result<(), Error> {
        let metadata = self.provider.metadata().await?;
        let set: RawKeySet = http::get_json(self.provider.http(), &metadata.jwks_uri).await?;
        cache.keys.clear();
        cache.anonymous.clear();
        for value in set.keys {
            // A provider may publish key types this crate cannot parse, so skip those alone.
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(error) => {
                    tracing::debug!(%error, "skipping a key the verifier cannot use");
                    continue;
                }
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            match jwk.common.key_id.clone() {
                Some(kid) => {
                    cache.keys.insert(kid, jwk);
                }
                None => cache.anonymous.push(jwk),
            }
        }
        cache.fetched_at = Some(Instant::now());
        tracing::debug!(
            jwks_uri = %metadata.jwks_uri,
            keys = cache.keys.len() + cache.anonymous.len(),
            "key set downloaded"
        );
        Ok(())
    }
}

#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

/// Picks the key for `kid`. Without a `kid`, the only key of the set is used, and a set with
/// several keys is an error. A key whose own `alg` differs from the header's is rejected.
fn lookup(cache: &KeyCache, kid: Option<&str>, alg: Algorithm) -> Result<Option<Jwk>, Error> {
    let jwk = match kid {
        Some(kid) => cache.keys.get(kid),
        None => {
            let mut all = cache.keys.values().chain(cache.anonymous.iter());
            match (all.next(), all.next()) {
                (Some(only), None) => Some(only),
                (None, _) => None,
                (Some(_), Some(_)) => return Err(TokenRejection::MissingKeyId.into()),
            }
        }
    };
    let Some(jwk) = jwk else {
        return Ok(None);
    };
    if let Some(key_alg) = jwk.common.key_algorithm
        && format!("{key_alg:?}") != format!("{alg:?}")
    {
        return Err(TokenRejection::UnsupportedAlgorithm(format!(
            "{alg:?} (the key {kid:?} is for {key_alg:?})"
        ))
        .into());
    }
    Ok(Some(jwk.clone()))
}

fn rejection_for(kind: &ErrorKind) -> TokenRejection {
    match kind {
        ErrorKind::InvalidSignature => TokenRejection::InvalidSignature,
        ErrorKind::ExpiredSignature => TokenRejection::Expired,
        ErrorKind::ImmatureSignature => TokenRejection::NotYetValid,
        ErrorKind::InvalidAlgorithm => {
            TokenRejection::UnsupportedAlgorithm("algorithm does not fit the key type".to_owned())
        }
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => TokenRejection::MissingClaim("exp"),
            "iss" => TokenRejection::MissingClaim("iss"),
            "sub" => TokenRejection::MissingClaim("sub"),
            _ => TokenRejection::Malformed(format!("missing claim {claim}")),
        },
        other => TokenRejection::Malformed(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_accepts_string_and_array() {
        let one: Claims = serde_json::from_str(r#"{"aud":"renku-cli"}"#).expect("string aud");
        assert_eq!(one.aud.into_vec(), vec!["renku-cli".to_owned()]);
        let many: Claims = serde_json::from_str(r#"{"aud":["a","renku-cli"]}"#).expect("array aud");
        assert_eq!(
            many.aud.into_vec(),
            vec!["a".to_owned(), "renku-cli".to_owned()]
        );
        let none: Claims = serde_json::from_str("{}").expect("no aud");
        assert!(none.aud.into_vec().is_empty());
    }

    #[tokio::test]
    async fn hmac_tokens_are_rejected_before_any_request() {
        // HS256 over {"alg":"HS256","typ":"JWT"}.{"sub":"x"}. The signature does not matter.
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        // Port 9 (discard) on loopback: nothing may be contacted for this token.
        let provider = Arc::new(Provider::new("http://127.0.0.1:9/realms/Renku").expect("issuer"));
        let verifier = TokenVerifier::new(provider, "renku-cli");
        let error = verifier
            .verify(token)
            .await
            .expect_err("HS256 must be rejected");
        assert!(
            matches!(
                error,
                Error::TokenRejected(TokenRejection::UnsupportedAlgorithm(_))
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let provider = Arc::new(Provider::new("http://127.0.0.1:9/realms/Renku").expect("issuer"));
        let verifier = TokenVerifier::new(provider, "renku-cli");
        let error = verifier
            .verify("not-a-jwt")
            .await
            .expect_err("garbage must be rejected");
        assert!(
            matches!(error, Error::TokenRejected(TokenRejection::Malformed(_))),
            "{error}"
        );
    }
}
