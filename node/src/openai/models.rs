//! `GET /v1/models` and `GET /v1/models/{model}`.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;
use super::exchange::json_response;
use super::types::{ModelCard, ModelList};
use super::ApiState;

pub async fn list_models(State(state): State<Arc<ApiState>>) -> Response {
    json_response(&ModelList {
        object: "list",
        data: vec![card(&state)],
    })
    .unwrap_or_else(IntoResponse::into_response)
}

pub async fn retrieve_model(
    State(state): State<Arc<ApiState>>,
    Path(model): Path<String>,
) -> Response {
    if model == state.model_name {
        json_response(&card(&state)).unwrap_or_else(IntoResponse::into_response)
    } else {
        ApiError::model_not_found(&model).into_response()
    }
}

fn card(state: &ApiState) -> ModelCard {
    ModelCard {
        id: state.model_name.clone(),
        object: "model",
        created: served_since(),
        owned_by: "stator",
        max_model_len: state.context_length,
    }
}

/// When this process started serving (the `created` of its model card).
pub fn served_since() -> u64 {
    static SINCE: OnceLock<u64> = OnceLock::new();
    *SINCE.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0)
    })
}
