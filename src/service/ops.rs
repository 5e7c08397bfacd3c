//! Operability routes: liveness, readiness, Prometheus metrics, the OpenAPI document.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{ApiError, Shared};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the models are loaded and the store answers.
async fn readyz(State(state): State<Shared>) -> Response {
    if !state.metrics.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "models loading\n").into_response();
    }
    match state.db(|s| s.queue_depth()).await {
        Ok(_) => "ready\n".into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store: {}\n", e.message),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Shared>) -> Result<Response, ApiError> {
    let depth = state.db(|s| s.queue_depth()).await?;
    Ok((
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(depth),
    )
        .into_response())
}

async fn openapi() -> Response {
    (
        [("content-type", "application/json")],
        super::openapi::DOCUMENT,
    )
        .into_response()
}
