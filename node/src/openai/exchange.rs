//! The request/response envelope every endpoint shares: request id (response header and
//! tracing span), JSON body parsing with OpenAI-shaped errors, the requests_total series.

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics::counter;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::errors::ApiError;
use super::metrics::{Endpoint, RequestMetrics};
use super::ApiState;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// What a handler gets for one request.
pub struct Exchange {
    pub request_id: String,
    /// Unix seconds, the `created` field of every response object.
    pub created: u64,
    pub span: tracing::Span,
    pub metrics: RequestMetrics,
}

/// Runs `handler` for one request: assigns the id, turns errors into OpenAI's shape, counts
/// the response and tags it with `x-request-id`.
pub async fn serve<H, F>(
    endpoint: Endpoint,
    state: Arc<ApiState>,
    body: Result<Bytes, BytesRejection>,
    handler: H,
) -> Response
where
    H: FnOnce(Arc<ApiState>, Exchange, Result<Bytes, BytesRejection>) -> F,
    F: Future<Output = Result<Response, ApiError>>,
{
    let request_id = format!(
        "{}-{}",
        endpoint.id_prefix(),
        hex::encode(rand::random::<[u8; 12]>())
    );
    let span = tracing::info_span!("openai", request_id = %request_id, endpoint = endpoint.label());
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let model = state.model_name.clone();
    let exchange = Exchange {
        request_id: request_id.clone(),
        created,
        span: span.clone(),
        metrics: RequestMetrics::start(endpoint),
    };
    let mut response = match handler(state, exchange, body)
        .instrument(span.clone())
        .await
    {
        Ok(response) => response,
        Err(error) => {
            span.in_scope(|| {
                tracing::info!(status = error.status.as_u16(), message = %error.message, "request refused")
            });
            error.into_response()
        }
    };
    record_status(endpoint, &model, response.status());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

fn record_status(endpoint: Endpoint, model: &str, status: StatusCode) {
    counter!(
        "stator_frontend_requests_total",
        "model" => model.to_string(),
        "endpoint" => endpoint.label(),
        "status" => status.as_str().to_string()
    )
    .increment(1);
}

/// The request body, refused when it cannot be read (too large) or is empty.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    let bytes = body.map_err(|rejection| ApiError {
        status: rejection.status(),
        ..ApiError::invalid_request(rejection.body_text())
    })?;
    if bytes.is_empty() {
        return Err(ApiError::invalid_request(
            "The request body is empty; expected a JSON object.",
        ));
    }
    Ok(bytes)
}

/// Parses a JSON body whatever its Content-Type (`curl -d` sends form encoding), with
/// OpenAI-shaped 400s whose message names the offending field.
pub fn parse_json<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    axum::Json::<T>::from_bytes(bytes)
        .map(|axum::Json(value)| value)
        .map_err(|rejection| ApiError::invalid_request(rejection.body_text()))
}

/// The served model must be the one asked for.
pub fn check_model(state: &ApiState, requested: &str) -> Result<(), ApiError> {
    if requested == state.model_name {
        Ok(())
    } else {
        Err(ApiError::model_not_found(requested))
    }
}

/// A JSON body with status 200.
pub fn json_response<T: serde::Serialize>(value: &T) -> Result<Response, ApiError> {
    serde_json::to_vec(value)
        .map(|bytes| {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                bytes,
            )
                .into_response()
        })
        .map_err(|e| ApiError::internal(format!("encoding the response failed: {e}")))
}
