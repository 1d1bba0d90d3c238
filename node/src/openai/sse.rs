//! Server-sent events for streamed completions: one `data:` line per chunk, the usage chunk when
//! asked for, and `data: [DONE]`. The body owns the generation, so a client that goes away drops
//! the body, which drops the engine stream and cancels the sequence.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};

use super::assemble::{Finish, RenderedLogprob};
use super::errors::ApiError;
use super::generation::Generation;
use super::types::Usage;

const DONE: &str = "[DONE]";

/// How an endpoint renders its chunks (each returns the JSON text of one `data:` line).
pub trait ChunkFormat: Send + 'static {
    /// Chunks before any text (chat announces the assistant role).
    fn opening(&mut self) -> Vec<String>;
    fn delta(&mut self, text: String, logprobs: Vec<RenderedLogprob>) -> String;
    fn finish(&mut self, finish: Finish) -> String;
    /// The usage chunk, when the client asked for one.
    fn usage(&mut self, usage: Usage) -> Option<String>;
}

enum Stage {
    Opening,
    Generating,
}

pub fn sse_response<F: ChunkFormat>(generation: Generation, format: F) -> Response {
    let chunks = stream::unfold(
        Some((generation, format, Stage::Opening)),
        |state| async move {
            let (mut generation, mut format, stage) = state?;
            if let Stage::Opening = stage {
                let opening = format.opening();
                return Some((opening, Some((generation, format, Stage::Generating))));
            }
            let mut lines = Vec::new();
            match generation.next_piece().await {
                Some(Ok(piece)) => {
                    if !piece.text.is_empty() || !piece.logprobs.is_empty() {
                        lines.push(format.delta(piece.text, piece.logprobs));
                    }
                    let Some((finish, usage)) = piece.finish else {
                        return Some((lines, Some((generation, format, Stage::Generating))));
                    };
                    lines.push(format.finish(finish));
                    lines.extend(format.usage(usage));
                }
                Some(Err(error)) => lines.push(error.to_json()),
                None => {
                    lines.push(ApiError::internal("The generation ended unexpectedly.").to_json())
                }
            }
            lines.push(DONE.to_string());
            Some((lines, None))
        },
    )
    .flat_map(|lines| {
        stream::iter(
            lines
                .into_iter()
                .map(|line| Ok::<_, Infallible>(Event::default().data(line))),
        )
    });
    Sse::new(chunks)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Serializes a chunk; our chunk types always serialize, the fallback only guards the invariant.
pub fn chunk_json<T: serde::Serialize>(chunk: &T) -> String {
    serde_json::to_string(chunk)
        .unwrap_or_else(|e| ApiError::internal(format!("encoding a chunk failed: {e}")).to_json())
}
