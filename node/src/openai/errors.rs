//! Errors in OpenAI's wire shape: `{"error":{"message","type","param","code"}}` with the status
//! OpenAI's clients map to their exception classes (400 → BadRequestError, 404 → NotFoundError,
//! 429 → RateLimitError, 503 → InternalServerError with retry).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::source::GenerateError;

/// An error answered to the client; `status` picks the HTTP status and the rest is the body.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// A bad request parameter; `param` names the offending field as the client sent it.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    /// A request that is malformed as a whole (unparseable JSON, wrong types).
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    pub fn model_not_found(requested: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "The model `{requested}` does not exist or you do not have access to it."
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn context_length_exceeded(
        context_length: usize,
        prompt: usize,
        completion: usize,
    ) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "This model's maximum context length is {context_length} tokens. However, you \
                 requested {} tokens ({prompt} in the prompt, {completion} for the completion). \
                 Please reduce the length of the prompt or the completion.",
                prompt + completion
            ),
            kind: "invalid_request_error",
            param: None,
            code: Some("context_length_exceeded"),
        }
    }

    pub fn overloaded() -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "The server is at capacity; retry shortly.".into(),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "service_unavailable",
            param: None,
            code: None,
        }
    }

    /// A failure inside the server (engine step failure, tokenizer error on model output).
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The `{"error":{...}}` object, also sent as an SSE `data:` line when a stream fails.
    pub fn to_json(&self) -> String {
        let envelope = ErrorEnvelope {
            error: ErrorBody {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        serde_json::to_string(&envelope).unwrap_or_else(|_| {
            r#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#.into()
        })
    }
}

impl From<GenerateError> for ApiError {
    fn from(err: GenerateError) -> Self {
        match err {
            GenerateError::Overloaded => Self::overloaded(),
            GenerateError::PromptTooLong { tokens, max } => Self {
                status: StatusCode::BAD_REQUEST,
                message: format!(
                    "The prompt has {tokens} tokens, more than this model's limit of {max}."
                ),
                kind: "invalid_request_error",
                param: None,
                code: Some("context_length_exceeded"),
            },
            GenerateError::Invalid(message) => Self::invalid_request(message),
            GenerateError::ShuttingDown => Self::unavailable("The server is shutting down."),
            GenerateError::Unavailable(why) => {
                Self::unavailable(format!("No worker is available: {why}."))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.to_json(),
        )
            .into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
