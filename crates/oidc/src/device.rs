//! OAuth 2.0 Device Authorization Grant (RFC 8628) for a public client.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::token::{RawTokenResponse, TokenResponse};
use crate::{Error, Provider, Secret, http};

/// `grant_type` of the device access token request (RFC 8628, section 3.4).
const DEVICE_CODE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Polling interval when the provider sends none (RFC 8628, section 3.2).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Amount added to the polling interval on each `slow_down` (RFC 8628, section 3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// Consecutive transport failures tolerated while polling before giving up.
const DEFAULT_NETWORK_RETRIES: u32 = 3;

/// Response of the device authorization endpoint: what to show the user, and the device code
/// to poll with.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    /// The code the client polls with. It is a credential, so it is never shown or logged.
    pub device_code: Secret,
    /// The code the user types on the verification page.
    pub user_code: String,
    /// The page where the user enters `user_code`.
    pub verification_uri: String,
    /// The verification page with the user code filled in, if the provider offers one.
    pub verification_uri_complete: Option<String>,
    /// Lifetime of the device and user codes.
    pub expires_in: Duration,
    /// Minimum time between two token requests.
    pub interval: Duration,
    /// Arrival time of the device authorization response, from which `expires_in` counts.
    pub issued_at: Instant,
}

impl DeviceAuthorization {
    /// Returns the moment the codes expire.
    pub fn expires_at(&self) -> Instant {
        self.issued_at + self.expires_in
    }
}

#[derive(Deserialize)]
struct RawDeviceAuthorization {
    device_code: Secret,
    user_code: String,
    // Some providers predate the RFC and call it verification_url.
    #[serde(alias = "verification_url")]
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: u64,
    interval: Option<u64>,
}

/// Progress of [`DeviceFlow::wait_for_token_with`], for a caller that shows it to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollEvent {
    /// The provider returned `authorization_pending`.
    Pending,
    /// The provider returned `slow_down`, so polling continues at a longer interval.
    SlowDown {
        /// The interval from now on.
        interval: Duration,
    },
    /// A token request failed in transport and will be retried.
    Retrying {
        /// Failures in a row so far, this one included.
        attempt: u32,
        /// The transport error message.
        error: String,
    },
}

/// Signs a user in through a public client with the device authorization grant.
#[derive(Debug, Clone)]
pub struct DeviceFlow {
    provider: Arc<Provider>,
    client_id: String,
    scope: String,
    network_retries: u32,
}

impl DeviceFlow {
    /// Creates a flow for the public client `client_id`, requesting scope `openid`.
    pub fn new(provider: Arc<Provider>, client_id: impl Into<String>) -> Self {
        Self {
            provider,
            client_id: client_id.into(),
            scope: "openid".to_owned(),
            network_retries: DEFAULT_NETWORK_RETRIES,
        }
    }

    /// Sets the space-separated scope list to request instead of `openid`.
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// Sets how many transport failures in a row polling tolerates before it returns
    /// [`Error::Unreachable`] (default 3). Zero gives up on the first failure.
    pub fn with_network_retries(mut self, retries: u32) -> Self {
        self.network_retries = retries;
        self
    }

    /// Requests a device code and user code (RFC 8628, section 3.1).
    pub async fn start(&self) -> Result<DeviceAuthorization, Error> {
        let metadata = self.provider.metadata().await?;
        let endpoint = metadata
            .device_authorization_endpoint
            .as_ref()
            .ok_or_else(|| Error::DeviceFlowUnsupported {
                issuer: self.provider.issuer().to_owned(),
            })?;
        let form = [
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        let raw: RawDeviceAuthorization =
            http::post_form(self.provider.http(), endpoint, &form).await?;

        let authorization = DeviceAuthorization {
            device_code: raw.device_code,
            user_code: raw.user_code,
            verification_uri: raw.verification_uri,
            verification_uri_complete: raw.verification_uri_complete,
            expires_in: Duration::from_secs(raw.expires_in),
            interval: raw.interval.map_or(DEFAULT_INTERVAL, Duration::from_secs),
            issued_at: Instant::now(),
        };
        tracing::info!(
            client_id = %self.client_id,
            verification_uri = %authorization.verification_uri,
            expires_in_s = raw.expires_in,
            interval_s = authorization.interval.as_secs(),
            "device authorization started"
        );
        Ok(authorization)
    }

    /// Sends one device access token request (RFC 8628, section 3.4).
    ///
    /// Returns the tokens once the user has approved. Until then it fails with
    /// [`Error::AuthorizationPending`] or [`Error::SlowDown`]. The final errors are
    /// [`Error::AccessDenied`] and [`Error::ExpiredToken`].
    pub async fn poll_once(
        &self,
        authorization: &DeviceAuthorization,
    ) -> Result<TokenResponse, Error> {
        let metadata = self.provider.metadata().await?;
        let form = [
            ("grant_type", DEVICE_CODE_GRANT_TYPE),
            ("device_code", authorization.device_code.expose()),
            ("client_id", self.client_id.as_str()),
        ];
        let raw: RawTokenResponse =
            http::post_form(self.provider.http(), &metadata.token_endpoint, &form).await?;
        raw.into_response(&metadata.token_endpoint)
    }

    /// Polls until the user approves or denies, or the codes expire.
    pub async fn wait_for_token(
        &self,
        authorization: &DeviceAuthorization,
    ) -> Result<TokenResponse, Error> {
        self.wait_for_token_with(authorization, |_| {}).await
    }

    /// Polls like [`DeviceFlow::wait_for_token`] and reports each intermediate response to
    /// `on_event`.
    ///
    /// The first request goes out one interval after the device code was issued, and each
    /// later one an interval after the previous response. Every `slow_down` adds 5 seconds to
    /// the interval for the rest of the flow. Transport failures are retried at the current
    /// interval up to the configured count (see [`DeviceFlow::with_network_retries`]). Once
    /// the codes have expired locally, polling stops with [`Error::ExpiredToken`] even if the
    /// provider has not returned that error yet.
    pub async fn wait_for_token_with(
        &self,
        authorization: &DeviceAuthorization,
        mut on_event: impl FnMut(&PollEvent),
    ) -> Result<TokenResponse, Error> {
        let mut state = PollState {
            interval: authorization.interval,
            failures: 0,
        };
        // The provider reports expired_token itself. The local deadline, one interval later,
        // ends the loop only if it never does.
        let deadline = authorization.expires_at() + authorization.interval;
        let mut next_poll = authorization.issued_at + authorization.interval;

        loop {
            tokio::time::sleep_until(next_poll).await;
            if Instant::now() >= deadline {
                tracing::info!(client_id = %self.client_id, "device code expired while polling");
                return Err(Error::ExpiredToken);
            }

            let result = self.poll_once(authorization).await;
            match state.next(result, self.network_retries) {
                ControlFlow::Break(Ok(tokens)) => {
                    tracing::info!(client_id = %self.client_id, "device authorization approved");
                    return Ok(tokens);
                }
                ControlFlow::Break(Err(error)) => {
                    tracing::warn!(
                        %error,
                        client_id = %self.client_id,
                        "device authorization failed"
                    );
                    return Err(error);
                }
                ControlFlow::Continue(event) => on_event(&event),
            }
            next_poll = Instant::now() + state.interval;
        }
    }
}

/// Interval and failure count of a running poll loop.
struct PollState {
    interval: Duration,
    failures: u32,
}

impl PollState {
    /// Decides from one token response whether polling ends (`Break`) or continues, and
    /// adjusts the interval and failure count.
    fn next(
        &mut self,
        result: Result<TokenResponse, Error>,
        network_retries: u32,
    ) -> ControlFlow<Result<TokenResponse, Error>, PollEvent> {
        match result {
            Err(Error::AuthorizationPending) => {
                self.failures = 0;
                ControlFlow::Continue(PollEvent::Pending)
            }
            Err(Error::SlowDown) => {
                self.failures = 0;
                self.interval += SLOW_DOWN_STEP;
                tracing::debug!(
                    interval_s = self.interval.as_secs(),
                    "provider requested slow_down"
                );
                ControlFlow::Continue(PollEvent::SlowDown {
                    interval: self.interval,
                })
            }
            Err(error @ Error::Unreachable { .. }) if self.failures < network_retries => {
                self.failures += 1;
                tracing::warn!(
                    %error,
                    attempt = self.failures,
                    "device token request failed, retrying"
                );
                ControlFlow::Continue(PollEvent::Retrying {
                    attempt: self.failures,
                    error: error.to_string(),
                })
            }
            finished => ControlFlow::Break(finished),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn unreachable_error() -> Error {
        // Port 1 on loopback has no listener, so the connection is refused.
        let url = reqwest::Url::parse("http://127.0.0.1:1/token").expect("valid URL");
        let client = crate::http::default_client().expect("HTTP client");
        http::get_json::<serde_json::Value>(&client, &url)
            .await
            .expect_err("nothing listens on port 1")
    }

    fn state() -> PollState {
        PollState {
            interval: Duration::from_secs(1),
            failures: 0,
        }
    }

    #[test]
    fn slow_down_adds_five_seconds_each_time() {
        let mut state = state();
        let first = state.next(Err(Error::SlowDown), 0);
        assert_eq!(
            first.continue_value(),
            Some(PollEvent::SlowDown {
                interval: Duration::from_secs(6)
            })
        );
        let second = state.next(Err(Error::SlowDown), 0);
        assert_eq!(
            second.continue_value(),
            Some(PollEvent::SlowDown {
                interval: Duration::from_secs(11)
            })
        );
        assert_eq!(state.interval, Duration::from_secs(11));
    }

    #[test]
    fn pending_keeps_interval() {
        let mut state = state();
        let step = state.next(Err(Error::AuthorizationPending), 0);
        assert_eq!(step.continue_value(), Some(PollEvent::Pending));
        assert_eq!(state.interval, Duration::from_secs(1));
    }

    #[test]
    fn final_errors_end_polling() {
        for error in [Error::AccessDenied, Error::ExpiredToken] {
            let text = error.to_string();
            let step = state().next(Err(error), 3);
            assert!(
                matches!(step, ControlFlow::Break(Err(_))),
                "{text} must end polling"
            );
        }
    }

    #[tokio::test]
    async fn transport_failures_retried_up_to_limit() {
        let mut state = state();
        for attempt in 1..=2 {
            let step = state.next(Err(unreachable_error().await), 2);
            let ControlFlow::Continue(PollEvent::Retrying {
                attempt: seen,
                error,
            }) = step
            else {
                panic!("failure {attempt} should be retried");
            };
            assert_eq!(seen, attempt);
            assert!(error.contains("127.0.0.1:1"), "{error}");
        }
        let step = state.next(Err(unreachable_error().await), 2);
        assert!(matches!(
            step,
            ControlFlow::Break(Err(Error::Unreachable { .. }))
        ));
    }

    #[tokio::test]
    async fn pending_resets_failure_count() {
        let mut state = state();
        let step = state.next(Err(unreachable_error().await), 1);
        assert!(matches!(
            step,
            ControlFlow::Continue(PollEvent::Retrying { attempt: 1, .. })
        ));
        let step = state.next(Err(Error::AuthorizationPending), 1);
        assert_eq!(step.continue_value(), Some(PollEvent::Pending));
        let step = state.next(Err(unreachable_error().await), 1);
        assert!(matches!(
            step,
            ControlFlow::Continue(PollEvent::Retrying { attempt: 1, .. })
        ));
    }
}
