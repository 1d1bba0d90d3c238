//! Builds what this peer serves on the OpenAI API: the local engine, or nothing.

use anyhow::Result;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};
use tracing::warn;

use crate::cli::EngineArgs;

/// The OpenAI API router for this peer.
pub async fn build(args: &EngineArgs) -> Result<Router> {
    if args.no_model {
        return Ok(no_model_router("this peer runs without a model (--no-model)"));
    }
    warn!("the engine is not wired into the peer yet; serving without a model");
    Ok(no_model_router("this peer has no model loaded"))
}

fn no_model_router(reason: &'static str) -> Router {
    Router::new().nest_service(
        "/v1",
        axum::routing::any(move || async move {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"error": {"message": reason, "type": "service_unavailable", "param": null, "code": "no_model"}})),
            )
                .into_response()
        }),
    )
}
