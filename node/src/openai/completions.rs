//! `POST /v1/completions` (the legacy text completion API).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;

use super::assemble::{Finish, RenderedLogprob};
use super::errors::ApiError;
use super::exchange::{body_bytes, check_model, json_response, parse_json, serve, Exchange};
use super::generation::{self, Generation};
use super::metrics::Endpoint;
use super::params::{completion_logprobs, validate_sampling};
use super::sse::{chunk_json, sse_response, ChunkFormat};
use super::types::{
    Completion, CompletionChoice, CompletionRequest, PromptInput, SamplingFields, Usage,
};
use super::{logprobs, ApiState};

pub async fn completions(
    State(state): State<Arc<ApiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(Endpoint::Completions, state, body, handle).await
}

async fn handle(
    state: Arc<ApiState>,
    exchange: Exchange,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let request: CompletionRequest = parse_json(&body)?;
    let fields: SamplingFields = parse_json(&body)?;
    check_model(&state, &request.model)?;
    let top_logprobs = completion_logprobs(request.logprobs)?;
    let echo = request.echo.unwrap_or(false);
    if echo && top_logprobs.is_some() {
        return Err(ApiError::invalid_param(
            "echo",
            "echo together with logprobs is not supported: prompt logprobs are not computed.",
        ));
    }
    let sampling = validate_sampling(&fields, top_logprobs, state.tokenizer.vocab_size())?;
    let (prompt, prompt_text) = completion_prompt(&state, request.prompt, echo)?;
    let stream = sampling.stream;
    let include_usage = sampling.include_usage;
    let Exchange {
        request_id,
        created,
        span,
        metrics,
    } = exchange;
    let generation =
        generation::start(&state, &request_id, prompt, sampling, metrics, span).await?;
    let chunks = CompletionChunks {
        id: request_id,
        created,
        model: state.model_name.clone(),
        include_usage,
        echo: prompt_text,
        text_offset: 0,
    };
    if stream {
        Ok(sse_response(generation, chunks))
    } else {
        full_response(generation, chunks).await
    }
}

/// The prompt's token ids, and its text when it is to be echoed.
fn completion_prompt(
    state: &ApiState,
    prompt: PromptInput,
    echo: bool,
) -> Result<(Vec<u32>, Option<String>), ApiError> {
    let single = |count: usize| {
        if count == 1 {
            Ok(())
        } else {
            Err(ApiError::invalid_param(
                "prompt",
                format!("Exactly one prompt per request is supported, got {count}."),
            ))
        }
    };
    let (ids, text) = match prompt {
        PromptInput::Text(text) => (encode(state, &text)?, text),
        PromptInput::Texts(mut texts) => {
            single(texts.len())?;
            let text = texts.pop().unwrap_or_default();
            (encode(state, &text)?, text)
        }
        PromptInput::Tokens(ids) => token_prompt(state, ids, echo)?,
        PromptInput::TokenBatches(mut batches) => {
            single(batches.len())?;
            token_prompt(state, batches.pop().unwrap_or_default(), echo)?
        }
    };
    if ids.is_empty() {
        return Err(ApiError::invalid_param("prompt", "The prompt is empty."));
    }
    Ok((ids, echo.then_some(text)))
}

fn encode(state: &ApiState, text: &str) -> Result<Vec<u32>, ApiError> {
    state
        .tokenizer
        .encode(text, true)
        .map_err(|e| ApiError::internal(format!("tokenizing the prompt failed: {e}")))
}

fn token_prompt(
    state: &ApiState,
    ids: Vec<u32>,
    echo: bool,
) -> Result<(Vec<u32>, String), ApiError> {
    let vocab_size = state.tokenizer.vocab_size();
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
        return Err(ApiError::invalid_param(
            "prompt",
            format!("Token id {bad} is outside the vocabulary (size {vocab_size})."),
        ));
    }
    let text = if echo {
        state.tokenizer.decode(&ids, false).map_err(|e| {
            ApiError::invalid_param(
                "prompt",
                format!("The prompt tokens cannot be decoded: {e}"),
            )
        })?
    } else {
        String::new()
    };
    Ok((ids, text))
}

async fn full_response(
    generation: Generation,
    mut chunks: CompletionChunks,
) -> Result<Response, ApiError> {
    let want_logprobs = generation.wants_logprobs();
    let done = generation.collect().await?;
    let mut text = chunks.echo.take().unwrap_or_default();
    let mut offset = text.chars().count();
    text.push_str(&done.text);
    json_response(&Completion {
        id: chunks.id,
        object: "text_completion",
        created: chunks.created,
        model: chunks.model,
        choices: vec![CompletionChoice {
            index: 0,
            text,
            logprobs: want_logprobs.then(|| logprobs::completion(done.logprobs, &mut offset)),
            finish_reason: Some(done.finish.as_str()),
        }],
        usage: Some(Some(done.usage)),
    })
}

struct CompletionChunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// The prompt text to send first (`echo: true`).
    echo: Option<String>,
    text_offset: usize,
}

impl CompletionChunks {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> String {
        chunk_json(&Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        })
    }

    fn text_chunk(
        &self,
        text: String,
        logprobs: Option<super::types::CompletionLogprobs>,
        finish: Option<Finish>,
    ) -> String {
        let choice = CompletionChoice {
            index: 0,
            text,
            logprobs,
            finish_reason: finish.map(Finish::as_str),
        };
        self.chunk(vec![choice], None)
    }
}

impl ChunkFormat for CompletionChunks {
    fn opening(&mut self) -> Vec<String> {
        match self.echo.take() {
            Some(prompt) if !prompt.is_empty() => {
                self.text_offset = prompt.chars().count();
                vec![self.text_chunk(prompt, None, None)]
            }
            _ => Vec::new(),
        }
    }

    fn delta(&mut self, text: String, entries: Vec<RenderedLogprob>) -> String {
        let logprobs =
            (!entries.is_empty()).then(|| logprobs::completion(entries, &mut self.text_offset));
        self.text_chunk(text, logprobs, None)
    }

    fn finish(&mut self, finish: Finish) -> String {
        self.text_chunk(String::new(), None, Some(finish))
    }

    fn usage(&mut self, usage: Usage) -> Option<String> {
        self.include_usage
            .then(|| self.chunk(Vec::new(), Some(usage)))
    }
}
