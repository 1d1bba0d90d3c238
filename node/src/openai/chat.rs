//! `POST /v1/chat/completions`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use stator_gpu::tokenizer::ChatMessage;

use super::assemble::{Finish, RenderedLogprob};
use super::errors::ApiError;
use super::exchange::{body_bytes, check_model, json_response, parse_json, serve, Exchange};
use super::generation::{self, Generation};
use super::metrics::Endpoint;
use super::params::{chat_logprobs, validate_sampling};
use super::sse::{chunk_json, sse_response, ChunkFormat};
use super::types::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
    ChatCompletionRequest, ChatDelta, ChatMessageIn, MessageContent, SamplingFields, Usage,
};
use super::{logprobs, ApiState};

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

pub async fn chat_completions(
    State(state): State<Arc<ApiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(Endpoint::ChatCompletions, state, body, handle).await
}

async fn handle(
    state: Arc<ApiState>,
    exchange: Exchange,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let request: ChatCompletionRequest = parse_json(&body)?;
    let fields: SamplingFields = parse_json(&body)?;
    check_model(&state, &request.model)?;
    let top_logprobs = chat_logprobs(request.logprobs, request.top_logprobs)?;
    let sampling = validate_sampling(&fields, top_logprobs, state.tokenizer.vocab_size())?;
    let prompt = chat_prompt(&state, &request.messages)?;
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
    let chunks = ChatChunks {
        id: request_id,
        created,
        model: state.model_name.clone(),
        include_usage,
    };
    if stream {
        Ok(sse_response(generation, chunks))
    } else {
        full_response(generation, chunks).await
    }
}

/// Messages → the model's chat template (with the assistant turn opened) → token ids.
fn chat_prompt(state: &ApiState, messages: &[ChatMessageIn]) -> Result<Vec<u32>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must contain at least one message.",
        ));
    }
    let messages = messages
        .iter()
        .enumerate()
        .map(|(i, message)| to_template_message(i, message))
        .collect::<Result<Vec<_>, _>>()?;
    let text = state
        .tokenizer
        .apply_chat_template(&messages, true)
        .map_err(|e| {
            ApiError::invalid_param(
                "messages",
                format!("The chat template rejected the messages: {e}"),
            )
        })?;
    // The template already wrote any BOS it wants; adding special tokens again would double it.
    state
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::internal(format!("tokenizing the prompt failed: {e}")))
}

fn to_template_message(index: usize, message: &ChatMessageIn) -> Result<ChatMessage, ApiError> {
    if !ROLES.contains(&message.role.as_str()) {
        return Err(ApiError::invalid_param(
            format!("messages[{index}].role"),
            format!(
                "'{}' is not a valid role: use one of {}.",
                message.role,
                ROLES.join(", ")
            ),
        ));
    }
    let content = match &message.content {
        // An assistant turn that only called tools has null content.
        None => String::new(),
        Some(MessageContent::Text(text)) => text.clone(),
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for (part_index, part) in parts.iter().enumerate() {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(part_text)) => text.push_str(part_text),
                    ("text", None) => {
                        return Err(ApiError::invalid_param(
                            format!("messages[{index}].content[{part_index}].text"),
                            "A text content part needs a `text` field.",
                        ))
                    }
                    (other, _) => {
                        return Err(ApiError::invalid_param(
                            format!("messages[{index}].content[{part_index}].type"),
                            format!("Content parts of type '{other}' are not supported; this model takes text only."),
                        ))
                    }
                }
            }
            text
        }
    };
    Ok(ChatMessage {
        role: message.role.clone(),
        content,
    })
}

async fn full_response(generation: Generation, chunks: ChatChunks) -> Result<Response, ApiError> {
    let want_logprobs = generation.wants_logprobs();
    let done = generation.collect().await?;
    json_response(&ChatCompletion {
        id: chunks.id,
        object: "chat.completion",
        created: chunks.created,
        model: chunks.model,
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: done.text,
            },
            logprobs: want_logprobs.then(|| logprobs::chat(done.logprobs)),
            finish_reason: done.finish.as_str(),
        }],
        usage: done.usage,
    })
}

struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> String {
        chunk_json(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        })
    }
}

impl ChunkFormat for ChatChunks {
    fn opening(&mut self) -> Vec<String> {
        let role = ChatChunkChoice {
            index: 0,
            delta: ChatDelta {
                role: Some("assistant"),
                content: Some(String::new()),
            },
            logprobs: None,
            finish_reason: None,
        };
        vec![self.chunk(vec![role], None)]
    }

    fn delta(&mut self, text: String, entries: Vec<RenderedLogprob>) -> String {
        let logprobs = (!entries.is_empty()).then(|| logprobs::chat(entries));
        let choice = ChatChunkChoice {
            index: 0,
            delta: ChatDelta {
                role: None,
                content: Some(text),
            },
            logprobs,
            finish_reason: None,
        };
        self.chunk(vec![choice], None)
    }

    fn finish(&mut self, finish: Finish) -> String {
        let choice = ChatChunkChoice {
            index: 0,
            delta: ChatDelta::default(),
            logprobs: None,
            finish_reason: Some(finish.as_str()),
        };
        self.chunk(vec![choice], None)
    }

    fn usage(&mut self, usage: Usage) -> Option<String> {
        self.include_usage
            .then(|| self.chunk(Vec::new(), Some(usage)))
    }
}
