//! The OpenAI-compatible HTTP API: `POST /v1/chat/completions`, `POST /v1/completions`
//! (streaming via SSE or not), `GET /v1/models`.
//!
//! The frontend turns text into token ids (chat template, tokenizer), asks a [`TokenSource`] to
//! generate, and turns the events back into text (incremental detokenization, stop strings). It
//! never touches the engine itself, so generation can run locally or on a remote worker.

mod assemble;
mod chat;
mod completions;
mod errors;
mod exchange;
mod generation;
mod logprobs;
mod metrics;
mod models;
mod params;
pub mod source;
mod sse;
mod types;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use stator_gpu::tokenizer::Tokenizer;

pub use source::TokenSource;

/// What the API serves and where its tokens come from.
pub struct ApiState {
    /// The `model` clients must name; anything else is a 404.
    pub model_name: String,
    pub tokenizer: Arc<Tokenizer>,
    /// Prompt + completion tokens the model accepts.
    pub context_length: usize,
    pub source: Arc<dyn TokenSource>,
    /// The completion budget when the client gives none (clamped to what fits the context).
    pub default_max_tokens: usize,
}

/// The OpenAI routes, to be merged into the peer's HTTP app.
pub fn router(state: Arc<ApiState>) -> Router {
    models::served_since();
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{*model}", get(models::retrieve_model))
        .with_state(state)
}
