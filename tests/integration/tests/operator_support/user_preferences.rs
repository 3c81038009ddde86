//! A local HTTP server that honours the user-preferences API contract of
//! `docs/user-preferences-api.md`, and the settings of the real Keycloak whose client
//! credentials token the operator presents to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Settings of the Keycloak started by `scripts/keycloak.sh start`.
#[derive(Clone, Debug)]
pub struct Keycloak {
    /// Issuer URL of the `Renku` realm.
    pub issuer: String,
    /// Client id of the operator's confidential client.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: String,
}

impl Keycloak {
    /// Reads `<run>/keycloak/env`; fails with the command that starts Keycloak.
    pub fn from_env_file() -> anyhow::Result<Self> {
        let run = std::env::var_os("RENKU_SSH_RUN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| testkit::workspace_root().join(".run"));
        let path = run.join("keycloak").join("env");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "Keycloak is not running ({} is missing): start it with `scripts/keycloak.sh start`",
                path.display()
            )
        })?;
        let values: HashMap<&str, &str> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .collect();
        let get = |key: &str| {
            values
                .get(key)
                .map(|value| (*value).to_owned())
                .with_context(|| {
                    format!(
                        "{} lacks {key}: run `scripts/keycloak.sh start` again",
                        path.display()
                    )
                })
        };
        Ok(Self {
            issuer: get("KEYCLOAK_ISSUER")?,
            client_id: get("KEYCLOAK_OPERATOR_CLIENT_ID")?,
            client_secret: get("KEYCLOAK_OPERATOR_CLIENT_SECRET")?,
        })
    }

    /// Writes the client secret to a file in `directory`, as a mounted Secret would hold it.
    pub fn write_secret_file(&self, directory: &Path) -> anyhow::Result<PathBuf> {
        let path = directory.join("client-secret");
        std::fs::write(&path, format!("{}\n", self.client_secret))?;
        Ok(path)
    }

    /// Returns the realm's token endpoint.
    pub fn token_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer)
    }
}

/// One request the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// User in the path.
    pub user: String,
    /// Whether the bearer token verified.
    pub authorized: bool,
    /// The `If-None-Match` header.
    pub if_none_match: Option<String>,
    /// Status code of the response.
    pub status: u16,
}

#[derive(Default)]
struct Keys {
    by_user: HashMap<String, (u64, Vec<Value>)>,
    failure: Option<u16>,
    requests: Vec<Request>,
}

#[derive(Clone)]
struct ServerState {
    keys: Arc<Mutex<Keys>>,
    verifier: Arc<oidc::TokenVerifier>,
}

/// The server: `GET /api/data/users/{user}/ssh_keys`.
pub struct UserPreferencesServer {
    /// Bound loopback address.
    pub address: SocketAddr,
    keys: Arc<Mutex<Keys>>,
    stop: Option<oneshot::Sender<()>>,
}

impl UserPreferencesServer {
    /// Starts the server; it accepts only access tokens that Keycloak issued to `client_id`.
    pub async fn start(keycloak: &Keycloak) -> anyhow::Result<Self> {
        let provider = Arc::new(oidc::Provider::new(&keycloak.issuer)?);
        let verifier = Arc::new(oidc::TokenVerifier::new(
            provider,
            keycloak.client_id.clone(),
        ));
        let keys = Arc::new(Mutex::new(Keys::default()));
        let state = ServerState {
            keys: Arc::clone(&keys),
            verifier,
        };
        let router = Router::new()
            .route("/api/data/users/{user}/ssh_keys", get(user_keys))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            address,
            keys,
            stop: Some(stop),
        })
    }

    /// Returns the URL template for `--user-preferences-url`.
    pub fn url_template(&self) -> String {
        format!("http://{}/api/data/users/{{user}}/ssh_keys", self.address)
    }

    /// Replaces the keys of `user`, which changes the entity tag.
    pub fn set_keys(&self, user: &str, lines: &[&str]) {
        let items = lines
            .iter()
            .enumerate()
            .map(|(index, line)| {
                json!({
                    "id": format!("key-{index}"),
                    "name": format!("key {index}"),
                    "key_type": line.split(' ').next().unwrap_or_default(),
                    "fingerprint": null,
                    "created_at": "2025-01-02T03:04:05Z",
                    "public_key": line,
                })
            })
            .collect();
        let mut keys = self.keys.lock().expect("lock");
        let version = keys.by_user.get(user).map_or(1, |(version, _)| version + 1);
        keys.by_user.insert(user.to_owned(), (version, items));
    }

    /// Makes every request fail with `status`, or respond normally again with `None`.
    pub fn fail_with(&self, status: Option<u16>) {
        self.keys.lock().expect("lock").failure = status;
    }

    /// Returns the requests received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.keys.lock().expect("lock").requests.clone()
    }

    /// Stops accepting connections.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for UserPreferencesServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn user_keys(
    State(state): State<ServerState>,
    UrlPath(user): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let authorized = match token {
        Some(token) => state.verifier.verify(token).await.is_ok(),
        None => false,
    };
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut keys = state.keys.lock().expect("lock");
    let (status, response) = if !authorized {
        (401, StatusCode::UNAUTHORIZED.into_response())
    } else if let Some(failure) = keys.failure {
        let status = StatusCode::from_u16(failure).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (failure, status.into_response())
    } else {
        match keys.by_user.get(&user) {
            None => (404, StatusCode::NOT_FOUND.into_response()),
            Some((version, items)) => {
                let etag = format!("\"v{version}\"");
                if if_none_match.as_deref() == Some(etag.as_str()) {
                    (
                        304,
                        (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response(),
                    )
                } else {
                    let body = axum::Json(Value::Array(items.clone()));
                    (
                        200,
                        (StatusCode::OK, [(header::ETAG, etag)], body).into_response(),
                    )
                }
            }
        }
    };
    keys.requests.push(Request {
        user,
        authorized,
        if_none_match,
        status,
    });
    response
}

/// Fails unless the server responded to at least one authorised request for `user`.
pub fn assert_authorized_request(server: &UserPreferencesServer, user: &str) -> anyhow::Result<()> {
    let requests = server.requests();
    if !requests
        .iter()
        .any(|request| request.user == user && request.authorized)
    {
        bail!("no authorised request for {user}: {requests:?}");
    }
    Ok(())
}
