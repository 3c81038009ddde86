//! `POST /refresh/users/{user}` on the admin server: fetch one user's keys from the
//! user-preferences API now instead of at the next poll. The user-preferences service (or an
//! administrator) calls it after a user changes their keys.
//!
//! The route requires `Authorization: Bearer <token>` with the token from
//! `--refresh-token-file`. It returns `200` with a JSON summary after the fetch, and `502` when
//! the fetch failed (the last good keys stay in use). It returns `404` when no SSHAccess reads
//! the user's keys, `401` for a missing or wrong token, and `503` on a replica that is not the
//! leader.

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use oidc::Secret;
use serde_json::json;

use crate::userprefs::UserKeyRegistry;

/// The registry of the current leadership term, or `None` while this replica does not lead.
pub type RegistrySlot = Arc<RwLock<Option<Arc<UserKeyRegistry>>>>;

#[derive(Clone)]
struct RefreshState {
    token: Secret,
    registry: RegistrySlot,
}

/// Builds the refresh route, authenticated with `token`.
pub fn router(token: Secret, registry: RegistrySlot) -> Router {
    Router::new()
        .route("/refresh/users/{user}", post(refresh))
        .with_state(RefreshState { token, registry })
}

async fn refresh(
    State(state): State<RefreshState>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers, &state.token) {
        let body = json!({ "error": "missing or invalid bearer token" });
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(body),
        )
            .into_response();
    }
    let registry = state
        .registry
        .read()
        .unwrap_or_else(|poison| poison.into_inner())
        .clone();
    let Some(registry) = registry else {
        let body = json!({
            "error": "this replica is not the leader, or the user-preferences source is not \
                      configured; send the request to the leader",
        });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    };
    match registry.refresh(&user).await {
        Ok(outcome) => {
            let status = if outcome.snapshot.error.is_some() {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::OK
            };
            let body = json!({
                "user": user,
                "changed": outcome.changed,
                "subscribers": outcome.subscribers,
                "keys": outcome.snapshot.keys.as_ref().map(Vec::len),
                "error": outcome.snapshot.error.as_ref().map(ToString::to_string),
            });
            (status, axum::Json(body)).into_response()
        }
        Err(error) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": error.to_string() })),
        )
            .into_response(),
    }
}

/// Compares the bearer token in constant time, so response timing reveals nothing about it.
fn authorized(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(offered) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (offered, expected) = (offered.trim().as_bytes(), token.expose().as_bytes());
    if offered.len() != expected.len() {
        return false;
    }
    offered
        .iter()
        .zip(expected)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().expect("header value"));
        headers
    }

    #[test]
    fn bearer_token_must_match() {
        let token = Secret::new("s3cret-token");

        assert!(authorized(&headers("Bearer s3cret-token"), &token));
        assert!(!authorized(&headers("Bearer s3cret-tokem"), &token));
        assert!(!authorized(&headers("Bearer s3cret"), &token));
        assert!(!authorized(&headers("Basic s3cret-token"), &token));
        assert!(!authorized(&HeaderMap::new(), &token));
    }
}
