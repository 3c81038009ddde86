//! Tests against a real Keycloak with the Renku test realm (tests/keycloak/realm-renku.json).
//! Start it first with `scripts/keycloak.sh start`, because without it every test here fails.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::admin::Admin;
use common::browser::{Browser, Consent};
use common::relay::Relay;
use common::{Keycloak, User};
use oidc::{
    ClientCredentials, ClientCredentialsConfig, DeviceAuthorization, DeviceFlow, Error, PollEvent,
    Provider, Secret, TokenRejection, TokenVerifier,
};

fn cli_flow(keycloak: &Keycloak, provider: Arc<Provider>) -> DeviceFlow {
    DeviceFlow::new(provider, keycloak.cli_client_id.clone())
}

fn operator_credentials(keycloak: &Keycloak, provider: Arc<Provider>) -> ClientCredentials {
    ClientCredentials::new(
        provider,
        ClientCredentialsConfig {
            client_id: keycloak.operator_client_id.clone(),
            client_secret: Secret::new(keycloak.operator_client_secret.clone()),
            scope: None,
        },
    )
}

/// Runs the browser side of the device flow for `user`, checking that Keycloak shows the
/// expected final page.
async fn sign_in(authorization: &DeviceAuthorization, user: &User, consent: Consent) {
    let page = Browser::new()
        .complete_device_login(
            &authorization.verification_uri,
            &authorization.user_code,
            &user.username,
            &user.password,
            consent,
        )
        .await;
    assert_eq!(
        page.status,
        200,
        "final page {} ({})",
        page.url,
        page.title()
    );
    match consent {
        Consent::Accept => assert!(
            !page.url.as_str().contains("error="),
            "approval ended on an error page: {}",
            page.url
        ),
        Consent::Deny => assert!(
            page.url.as_str().contains("error=access_denied"),
            "denial did not end on the access_denied page: {}",
            page.url
        ),
    }
}

async fn poll_collecting_events(
    flow: &DeviceFlow,
    authorization: &DeviceAuthorization,
) -> (Result<oidc::TokenResponse, Error>, Vec<PollEvent>) {
    let mut events = Vec::new();
    let result = flow
        .wait_for_token_with(authorization, |event| events.push(event.clone()))
        .await;
    (result, events)
}

#[tokio::test]
async fn discovery_document_is_cached() {
    let keycloak = common::keycloak().await;
    let provider = keycloak.provider();

    let first = provider.metadata().await.expect("discovery");
    let second = provider.metadata().await.expect("discovery from cache");
    assert!(
        Arc::ptr_eq(&first, &second),
        "second call fetched the document again"
    );
    assert_eq!(first.issuer, keycloak.issuer);
    assert!(first.token_endpoint.as_str().starts_with(&keycloak.issuer));
    let device = first
        .device_authorization_endpoint
        .as_ref()
        .expect("device endpoint");
    assert!(device.as_str().starts_with(&keycloak.issuer));
}

#[tokio::test]
async fn discovery_of_unknown_realm_fails() {
    let keycloak = common::keycloak().await;
    let issuer = format!("{}/realms/no-such-realm", keycloak.url);
    let provider = Provider::new(&issuer).expect("issuer URL");

    let error = provider.metadata().await.expect_err("unknown realm");
    assert!(
        matches!(error, Error::HttpStatus { status: 404, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("no-such-realm"), "{error}");
}

#[tokio::test]
async fn device_flow_owner_approves() {
    let keycloak = common::keycloak().await;
    let _realm = common::shared_realm().await;
    let provider = keycloak.provider();
    let flow = cli_flow(&keycloak, provider.clone());

    let authorization = flow.start().await.expect("device authorization");
    assert!(!authorization.user_code.is_empty());
    assert!(authorization.verification_uri.starts_with(&keycloak.issuer));
    let complete = authorization
        .verification_uri_complete
        .as_deref()
        .expect("complete URI");
    assert!(complete.contains(&authorization.user_code), "{complete}");
    assert_eq!(authorization.interval, Duration::from_secs(1));
    assert!(
        authorization.expires_in >= Duration::from_secs(30),
        "{authorization:?}"
    );
    let pending = flow
        .poll_once(&authorization)
        .await
        .expect_err("nobody approved yet");
    assert!(matches!(pending, Error::AuthorizationPending), "{pending}");

    let (result, ()) = tokio::join!(
        flow.wait_for_token(&authorization),
        sign_in(&authorization, &keycloak.alice, Consent::Accept),
    );
    let tokens = result.expect("tokens after approval");
    assert!(
        tokens.id_token.is_some(),
        "scope openid should yield an ID token"
    );
    assert!(tokens.refresh_token.is_some());

    let verifier = TokenVerifier::new(provider, keycloak.cli_client_id.clone());
    let verified = verifier
        .verify(tokens.access_token.expose())
        .await
        .expect("verify");
    let alice_id = Admin::login(&keycloak)
        .await
        .user_id(&keycloak.alice.username)
        .await;
    assert_eq!(verified.subject, alice_id);
    assert_eq!(
        verified.authorized_party.as_deref(),
        Some(keycloak.cli_client_id.as_str())
    );
    assert!(
        verified.audience.contains(&keycloak.cli_client_id),
        "{verified:?}"
    );
    assert_eq!(verified.preferred_username.as_deref(), Some("alice"));
    assert!(verified.expires_at > SystemTime::now());

    let id_token = tokens.id_token.as_ref().expect("ID token");
    let error = verifier
        .verify(id_token.expose())
        .await
        .expect_err("ID token as access token");
    assert!(
        matches!(
            error,
            Error::TokenRejected(TokenRejection::NotAnAccessToken(_))
        ),
        "{error}"
    );
}

#[tokio::test]
async fn device_flow_user_denies() {
    let keycloak = common::keycloak().await;
    let _realm = common::shared_realm().await;
    let flow = cli_flow(&keycloak, keycloak.provider());

    let authorization = flow.start().await.expect("device authorization");
    let (result, ()) = tokio::join!(
        flow.wait_for_token(&authorization),
        sign_in(&authorization, &keycloak.bob, Consent::Deny),
    );
    let error = result.expect_err("denied request must not yield tokens");
    assert!(matches!(error, Error::AccessDenied), "{error}");
    assert!(error.to_string().contains("denied"), "{error}");
}

#[tokio::test]
async fn device_flow_code_expires() {
    let keycloak = common::keycloak().await;
    let admin = Admin::login(&keycloak).await;
    let flow = cli_flow(&keycloak, keycloak.provider());

    // The lifespan is fixed into a device code when it is issued, so the shorter setting is
    // needed only around start(), and other tests see it never.
    let authorization = {
        let _realm = common::exclusive_realm().await;
        let client = &keycloak.cli_client_id;
        admin
            .set_client_attribute(client, "oauth2.device.code.lifespan", "3")
            .await;
        let authorization = flow.start().await;
        admin
            .set_client_attribute(client, "oauth2.device.code.lifespan", "")
            .await;
        authorization.expect("device authorization")
    };
    assert_eq!(authorization.expires_in, Duration::from_secs(3));

    let (result, events) = poll_collecting_events(&flow, &authorization).await;
    let error = result.expect_err("nobody approved");
    assert!(matches!(error, Error::ExpiredToken), "{error}");
    assert!(
        error.to_string().contains("run the command again"),
        "{error}"
    );
    assert!(events.contains(&PollEvent::Pending), "{events:?}");
}

#[tokio::test]
async fn device_flow_slow_down_adds_five_seconds() {
    let keycloak = common::keycloak().await;
    let _realm = common::shared_realm().await;
    let flow = cli_flow(&keycloak, keycloak.provider());

    let mut authorization = flow.start().await.expect("device authorization");
    let raw = flow
        .poll_once(&authorization)
        .await
        .expect_err("nobody approved yet");
    assert!(matches!(raw, Error::AuthorizationPending), "{raw}");
    let raw = flow
        .poll_once(&authorization)
        .await
        .expect_err("polled too fast");
    assert!(matches!(raw, Error::SlowDown), "{raw}");

    // Polling with no interval at all makes Keycloak return slow_down. The poller must then
    // wait 5 s more between requests and still get the tokens.
    authorization.interval = Duration::ZERO;
    let started = tokio::time::Instant::now();
    let ((result, events), ()) = tokio::join!(
        poll_collecting_events(&flow, &authorization),
        sign_in(&authorization, &keycloak.alice, Consent::Accept),
    );
    result.expect("tokens after approval");
    let slow_down = PollEvent::SlowDown {
        interval: Duration::from_secs(5),
    };
    assert!(events.contains(&slow_down), "{events:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn device_flow_provider_goes_away_mid_poll() {
    let keycloak = common::keycloak().await;
    let _realm = common::shared_realm().await;
    let target: SocketAddr = keycloak
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("KEYCLOAK_URL is http://<ip>:<port>");
    let relay = Relay::start(target).await;
    // Keycloak derives its URLs from the Host header, so through the relay the issuer is the
    // relay's address.
    let issuer = format!("http://{}/realms/{}", relay.addr, keycloak.realm);
    let provider = Arc::new(Provider::new(&issuer).expect("relay issuer"));
    let flow = cli_flow(&keycloak, provider).with_network_retries(1);

    let authorization = flow
        .start()
        .await
        .expect("device authorization through the relay");
    let mut events = Vec::new();
    let result = flow
        .wait_for_token_with(&authorization, |event| {
            if *event == PollEvent::Pending {
                relay.shutdown();
            }
            events.push(event.clone());
        })
        .await;

    let error = result.expect_err("provider is gone");
    assert!(matches!(error, Error::Unreachable { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("unreachable"), "{message}");
    assert!(message.contains(&relay.addr.to_string()), "{message}");
    assert!(
        message.to_lowercase().contains("connection refused"),
        "{message}"
    );
    assert!(
        events
            .iter()
            .any(|event| matches!(event, PollEvent::Retrying { attempt: 1, .. })),
        "{events:?}"
    );
}

#[tokio::test]
async fn client_credentials_token_is_cached_and_verifies() {
    let keycloak = common::keycloak().await;
    let _realm = common::shared_realm().await;
    let provider = keycloak.provider();
    let credentials = operator_credentials(&keycloak, provider.clone());

    let first = credentials
        .access_token()
        .await
        .expect("client credentials token");
    let second = credentials.access_token().await.expect("cached token");
    assert_eq!(first, second, "second call should reuse the cached token");
    credentials.invalidate().await;
    let third = credentials.access_token().await.expect("fresh token");
    assert_ne!(first, third, "invalidate() should force a new token");

    let verifier = TokenVerifier::new(provider, keycloak.operator_client_id.clone());
    let verified = verifier
        .verify(third.expose())
        .await
        .expect("verify operator token");
    let admin = Admin::login(&keycloak).await;
    let service_account = admin.service_account_id(&keycloak.operator_client_id).await;
    assert_eq!(verified.subject, service_account);
    assert_eq!(
        verified.authorized_party.as_deref(),
        Some(keycloak.operator_client_id.as_str())
    );
}

#[tokio::test]
async fn client_credentials_wrong_secret_fails() {
    let keycloak = common::keycloak().await;
    let credentials = ClientCredentials::new(
        keycloak.provider(),
        ClientCredentialsConfig {
            client_id: keycloak.operator_client_id.clone(),
            client_secret: Secret::new("not-the-secret"),
            scope: None,
        },
    );
    let error = credentials.access_token().await.expect_err("wrong secret");
    match &error {
        Error::OAuth { error: code, .. } => {
            assert!(
                code == "unauthorized_client" || code == "invalid_client",
                "{error}"
            )
        }
        other => panic!("expected an OAuth error, got {other}"),
    }
    assert!(!error.to_string().contains("not-the-secret"), "{error}");
}

#[tokio::test]
async fn client_credentials_token_refreshed_before_expiry() {
    let keycloak = common::keycloak().await;
    let admin = Admin::login(&keycloak).await;
    let _realm = common::exclusive_realm().await;
    let client = &keycloak.operator_client_id;
    admin
        .set_client_attribute(client, "access.token.lifespan", "4")
        .await;

    let provider = keycloak.provider();
    let credentials = operator_credentials(&keycloak, provider.clone())
        .with_refresh_margin(Duration::from_secs(30));
    let first = credentials.access_token().await;
    let again = credentials.access_token().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after_half_life = credentials.access_token().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let verifier = TokenVerifier::new(provider, client.clone()).with_leeway(Duration::ZERO);
    let expired = verifier
        .verify(first.as_ref().expect("token").expose())
        .await;
    admin
        .set_client_attribute(client, "access.token.lifespan", "")
        .await;

    let first = first.expect("first token");
    // A 4 s token is refreshed after half its lifetime, since the margin exceeds that.
    assert_eq!(first, again.expect("cached token"));
    assert_ne!(first, after_half_life.expect("refreshed token"));
    let error = expired.expect_err("token older than its lifespan");
    assert!(
        matches!(error, Error::TokenRejected(TokenRejection::Expired)),
        "{error}"
    );
}

#[tokio::test]
async fn token_for_other_client_is_rejected() {
    let keycloak = common::keycloak().await;
    let _realm = common::shared_realm().await;
    let provider = keycloak.provider();
    let token = operator_credentials(&keycloak, provider.clone())
        .access_token()
        .await
        .expect("token");

    let verifier = TokenVerifier::new(provider, keycloak.cli_client_id.clone());
    let error = verifier
        .verify(token.expose())
        .await
        .expect_err("operator token for renku-cli");
    match &error {
        Error::TokenRejected(TokenRejection::WrongAudience {
            client_id,
            authorized_party,
            ..
        }) => {
            assert_eq!(client_id, &keycloak.cli_client_id);
            assert_eq!(
                authorized_party.as_deref(),
                Some(keycloak.operator_client_id.as_str())
            );
        }
        other => panic!("expected WrongAudience, got {other}"),
    }
}

#[tokio::test]
async fn token_from_other_issuer_is_rejected() {
    let keycloak = common::keycloak().await;
    let _realm = common::shared_realm().await;
    let token = operator_credentials(&keycloak, keycloak.provider())
        .access_token()
        .await
        .expect("token");

    // Keycloak names its issuer after the request's host, so via "localhost" the same server
    // is a different issuer with the same keys: only the iss check can tell.
    let other_issuer = keycloak.issuer.replace("127.0.0.1", "localhost");
    let other = Arc::new(Provider::new(&other_issuer).expect("issuer"));
    let verifier = TokenVerifier::new(other, keycloak.operator_client_id.clone());
    let error = verifier
        .verify(token.expose())
        .await
        .expect_err("foreign issuer");
    assert!(
        matches!(
            error,
            Error::TokenRejected(TokenRejection::WrongIssuer { .. })
        ),
        "{error}"
    );
}

/// Replaces one part (0 header, 1 payload, 2 signature) of a compact JWS.
fn replace_part(token: &str, index: usize, part: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[index] = part;
    parts.join(".")
}

fn edit_json_part(token: &str, index: usize, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let encoded = token.split('.').nth(index).expect("JWS part");
    let mut value: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(encoded).expect("base64url")).expect("JSON");
    edit(&mut value);
    let encoded = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&value).expect("JSON"));
    replace_part(token, index, &encoded)
}

#[tokio::test]
async fn tampered_tokens_are_rejected() {
    let keycloak = common::keycloak().await;
    let _realm = common::shared_realm().await;
    let provider = keycloak.provider();
    let token = operator_credentials(&keycloak, provider.clone())
        .access_token()
        .await
        .expect("token");
    let token = token.expose();
    let verifier = TokenVerifier::new(provider, keycloak.operator_client_id.clone());
    verifier
        .verify(token)
        .await
        .expect("untouched token verifies");

    let signature = token.split('.').nth(2).expect("signature");
    let mut bytes = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("base64url signature");
    bytes[10] ^= 0x01;
    let flipped = replace_part(token, 2, &URL_SAFE_NO_PAD.encode(&bytes));
    let error = verifier
        .verify(&flipped)
        .await
        .expect_err("flipped signature bit");
    assert!(
        matches!(
            error,
            Error::TokenRejected(TokenRejection::InvalidSignature)
        ),
        "{error}"
    );

    let other_subject = edit_json_part(token, 1, |claims| claims["sub"] = "someone-else".into());
    let error = verifier
        .verify(&other_subject)
        .await
        .expect_err("changed sub");
    assert!(
        matches!(
            error,
            Error::TokenRejected(TokenRejection::InvalidSignature)
        ),
        "{error}"
    );

    let unknown_kid = edit_json_part(token, 0, |header| header["kid"] = "no-such-key".into());
    let error = verifier
        .verify(&unknown_kid)
        .await
        .expect_err("unknown kid");
    assert_eq!(
        error.to_string(),
        Error::TokenRejected(TokenRejection::UnknownKey("no-such-key".into())).to_string()
    );

    let hmac = edit_json_part(token, 0, |header| header["alg"] = "HS256".into());
    let error = verifier
        .verify(&hmac)
        .await
        .expect_err("alg switched to HS256");
    assert!(
        matches!(
            error,
            Error::TokenRejected(TokenRejection::UnsupportedAlgorithm(_))
        ),
        "{error}"
    );

    let unsigned = replace_part(
        &edit_json_part(token, 0, |header| header["alg"] = "none".into()),
        2,
        "",
    );
    let error = verifier.verify(&unsigned).await.expect_err("alg none");
    assert!(matches!(error, Error::TokenRejected(_)), "{error}");
}

#[tokio::test]
async fn key_set_refreshed_on_new_key() {
    let keycloak = common::keycloak().await;
    let admin = Admin::login(&keycloak).await;
    let _realm = common::exclusive_realm().await;
    let provider = keycloak.provider();
    let verifier = TokenVerifier::new(provider.clone(), keycloak.operator_client_id.clone())
        .with_min_refresh_interval(Duration::ZERO);
    let old = operator_credentials(&keycloak, provider.clone())
        .access_token()
        .await
        .expect("token");
    verifier
        .verify(old.expose())
        .await
        .expect("token signed with the original key");

    let component = admin.add_signing_key("rotation-test").await;
    let new = operator_credentials(&keycloak, provider)
        .access_token()
        .await;
    let verified = match &new {
        Ok(token) => Some(verifier.verify(token.expose()).await),
        Err(_) => None,
    };
    admin.delete_component(&component).await;

    let new = new.expect("token signed with the new key");
    let kid = |token: &Secret| {
        let header = token.expose().split('.').next().expect("header").to_owned();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url"))
                .expect("JSON");
        header["kid"].as_str().expect("kid").to_owned()
    };
    assert_ne!(
        kid(&old),
        kid(&new),
        "Keycloak did not sign with the added key"
    );
    verified
        .expect("verification ran")
        .expect("verifier fetched the new key");
}

/// A `tracing` writer that appends to a shared buffer.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogs {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_contain_no_secrets() {
    let keycloak = common::keycloak().await;
    let _realm = common::shared_realm().await;
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // #[tokio::test] runs on one thread, so the thread-local default receives every event.
    let _guard = tracing::subscriber::set_default(subscriber);

    let provider = keycloak.provider();
    let credentials = operator_credentials(&keycloak, provider.clone());
    let operator_token = credentials
        .access_token()
        .await
        .expect("client credentials token");
    let flow = cli_flow(&keycloak, provider.clone());
    let authorization = flow.start().await.expect("device authorization");
    let (result, ()) = tokio::join!(
        flow.wait_for_token(&authorization),
        sign_in(&authorization, &keycloak.alice, Consent::Accept),
    );
    let tokens = result.expect("tokens");
    TokenVerifier::new(provider, keycloak.cli_client_id.clone())
        .verify(tokens.access_token.expose())
        .await
        .expect("verify");
    let debug = format!("{tokens:?} {authorization:?} {credentials:?}");

    let logs = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("UTF-8 logs");
    assert!(
        logs.contains("device authorization approved"),
        "nothing was logged:\n{logs}"
    );
    let secrets = [
        ("client secret", keycloak.operator_client_secret.as_str()),
        ("operator token", operator_token.expose()),
        ("device code", authorization.device_code.expose()),
        ("access token", tokens.access_token.expose()),
        (
            "refresh token",
            tokens
                .refresh_token
                .as_ref()
                .expect("refresh token")
                .expose(),
        ),
    ];
    for (name, secret) in secrets {
        assert!(!logs.contains(secret), "{name} appears in the logs");
        assert!(!debug.contains(secret), "{name} appears in Debug output");
    }
}
