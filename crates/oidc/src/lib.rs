//! OAuth 2.0 and OpenID Connect client for renku-ssh, written against Keycloak (the identity
//! provider of Renku) but using only standard endpoints.
//!
//! - [`Provider`]: the issuer and its discovery document, fetched once and cached.
//! - [`DeviceFlow`]: the device authorization grant (RFC 8628), for a command-line user who
//!   signs in through a browser, possibly on another machine.
//! - [`TokenVerifier`]: JWT verification against the provider's key set, with issuer,
//!   audience or authorized party, and expiry checks.
//! - [`ClientCredentials`]: tokens for a confidential client (RFC 6749, section 4.4), cached
//!   until shortly before expiry.
//!
//! Client secrets, device codes and tokens are held in [`Secret`], whose `Debug` output is
//! redacted, and no log line of this crate contains one.
//!
//! ```no_run
//! # async fn sign_in() -> Result<(), oidc::Error> {
//! use std::sync::Arc;
//!
//! let provider = Arc::new(oidc::Provider::new("https://renku.example.org/auth/realms/Renku")?);
//! let flow = oidc::DeviceFlow::new(provider.clone(), "renku-cli");
//! let authorization = flow.start().await?;
//! println!("Open {} and enter {}", authorization.verification_uri, authorization.user_code);
//! let tokens = flow.wait_for_token(&authorization).await?;
//!
//! let verifier = oidc::TokenVerifier::new(provider, "renku-cli");
//! let verified = verifier.verify(tokens.access_token.expose()).await?;
//! println!("signed in as {}", verified.subject);
//! # Ok(())
//! # }
//! ```

mod client_credentials;
mod device;
mod discovery;
mod error;
mod http;
mod secret;
mod token;
mod verify;

pub use client_credentials::{ClientCredentials, ClientCredentialsConfig};
pub use device::{DeviceAuthorization, DeviceFlow, PollEvent};
pub use discovery::{Provider, ProviderMetadata};
pub use error::{Error, TokenRejection};
pub use secret::Secret;
pub use token::TokenResponse;
pub use verify::{TokenVerifier, VerifiedToken};
