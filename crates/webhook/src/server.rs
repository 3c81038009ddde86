//! The HTTPS server: TLS from rustls, HTTP/1.1 and HTTP/2 from hyper, routes from axum.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::Admission;
use crate::config::MUTATE_PATH;

/// Maximum size of an admission review body. A review of a CREATE carries one pod, and
/// kube-apiserver accepts request bodies of at most 3 MiB.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Time a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open connections get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns the router: `POST /mutate` handles admission reviews.
pub fn router(admission: Admission) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(mutate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(admission)
}

async fn mutate(State(admission): State<Admission>, body: Bytes) -> Response {
    let started = Instant::now();
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(error) => {
            tracing::warn!(%error, "invalid admission review body");
            let message = format!("invalid AdmissionReview: {error}");
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    let review = admission.review(review, started).await;
    match review_json(&review) {
        Ok(json) => axum::Json(json).into_response(),
        Err(error) => {
            tracing::error!(%error, "failed to serialise the admission response");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed to serialise the admission response",
            )
                .into_response()
        }
    }
}

/// Serialises the review with `response.patch` as base64 text. The API server's
/// `admission.k8s.io/v1` types declare that field as `[]byte`, which JSON encodes as base64, but
/// kube-core writes it as an array of numbers.
fn review_json(
    review: &AdmissionReview<DynamicObject>,
) -> Result<serde_json::Value, serde_json::Error> {
    let mut json = serde_json::to_value(review)?;
    let patch = review
        .response
        .as_ref()
        .and_then(|response| response.patch.as_deref());
    if let (Some(patch), Some(response)) = (patch, json.get_mut("response")) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(patch);
        response["patch"] = serde_json::Value::String(encoded);
    }
    Ok(json)
}

/// Accepts TLS connections on `listener` and serves `router` on them until `shutdown`
/// completes, then lets open connections finish for up to 10 s.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Accept fails for example when the process runs out of file descriptors;
                    // pausing keeps the loop from spinning.
                    tracing::warn!(%error, "failed to accept a webhook connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    // A TCP probe or port scan that closes without a handshake.
                    tracing::debug!(%peer, %error, "connection closed before the TLS handshake");
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%peer, %error, "TLS handshake with a webhook client failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "TLS handshake with a webhook client timed out");
                    return;
                }
            };
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "webhook connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("webhook connections still open after the drain timeout; closing them");
    }
}
