//! One generation from the client's point of view: start it on the [`TokenSource`], then turn
//! its engine events into [`Piece`]s of final text. Shared by both endpoints, streaming or not.

use futures::StreamExt;
use stator_gpu::request::{EngineEvent, GenerateRequest};
use tracing::Instrument;

use super::assemble::{AssembleError, Finish, Piece, RenderedLogprob, TextAssembler};
use super::errors::ApiError;
use super::metrics::RequestMetrics;
use super::params::{resolve_max_tokens, ValidatedSampling};
use super::source::EngineEvents;
use super::types::Usage;
use super::ApiState;

pub struct Generation {
    /// `None` once the generation is over; dropping the stream is what cancels the sequence.
    events: Option<EngineEvents>,
    assembler: TextAssembler,
    metrics: RequestMetrics,
    span: tracing::Span,
    /// The index of the next token the client has not seen: a source that resumed a
    /// generation elsewhere may send earlier indexes again, and those are skipped.
    next_index: usize,
}

/// A whole generation, for non-streaming responses.
pub struct Collected {
    pub text: String,
    pub logprobs: Vec<RenderedLogprob>,
    pub finish: Finish,
    pub usage: Usage,
}

/// Resolves the token budget against the prompt, and starts generating.
pub async fn start(
    state: &ApiState,
    request_id: &str,
    prompt: Vec<u32>,
    mut sampling: ValidatedSampling,
    metrics: RequestMetrics,
    span: tracing::Span,
) -> Result<Generation, ApiError> {
    let prompt_tokens = prompt.len();
    sampling.params.max_tokens = resolve_max_tokens(
        sampling.requested_max_tokens,
        prompt_tokens,
        state.context_length,
        state.default_max_tokens,
    )?;
    metrics.record_input_tokens(prompt_tokens);
    let assembler = TextAssembler::new(
        state.tokenizer.clone(),
        sampling.stops,
        &sampling.params.stop_token_ids,
        sampling.params.logprobs.is_some(),
        prompt_tokens,
    );
    tracing::debug!(
        prompt_tokens,
        max_tokens = sampling.params.max_tokens,
        seed = sampling.params.seed,
        "starting generation"
    );
    let request = GenerateRequest {
        id: request_id.to_string(),
        prompt,
        generated: Vec::new(),
        params: sampling.params,
    };
    let events = state.source.generate(request).await?;
    Ok(Generation {
        events: Some(events),
        assembler,
        metrics,
        span,
        next_index: 0,
    })
}

impl Generation {
    pub fn wants_logprobs(&self) -> bool {
        self.assembler.wants_logprobs()
    }

    /// The next piece of output; `None` after the finishing piece or an error.
    pub async fn next_piece(&mut self) -> Option<Result<Piece, ApiError>> {
        let span = self.span.clone();
        self.next_piece_inner().instrument(span).await
    }

    async fn next_piece_inner(&mut self) -> Option<Result<Piece, ApiError>> {
        loop {
            let events = self.events.as_mut()?;
            let outcome = match events.next().await {
                Some(EngineEvent::Token { index, .. }) if index < self.next_index => continue,
                Some(EngineEvent::Token { index, .. }) if index > self.next_index => {
                    self.events = None;
                    tracing::warn!(
                        index,
                        expected = self.next_index,
                        "token stream skipped tokens"
                    );
                    return Some(Err(ApiError::internal("The generation lost tokens.")));
                }
                Some(EngineEvent::Token {
                    token, logprobs, ..
                }) => {
                    self.next_index += 1;
                    self.metrics.on_token();
                    self.assembler.on_token(token, logprobs.as_ref())
                }
                Some(EngineEvent::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                }) => self.assembler.on_finished(
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                ),
                Some(EngineEvent::Failed { message }) => {
                    self.events = None;
                    tracing::warn!(%message, "generation failed");
                    return Some(Err(ApiError::internal(message)));
                }
                None => {
                    self.events = None;
                    tracing::warn!("token stream ended without a result");
                    return Some(Err(ApiError::internal(
                        "The generation ended unexpectedly.",
                    )));
                }
            };
            match outcome {
                Ok(piece) => {
                    if let Some((finish, usage)) = &piece.finish {
                        // Drop the stream now: for a stop-string match this cancels the sequence.
                        self.events = None;
                        self.metrics.record_output_tokens(usage.completion_tokens);
                        tracing::debug!(
                            finish = finish.as_str(),
                            completion_tokens = usage.completion_tokens,
                            "generation finished"
                        );
                    }
                    if !piece.is_empty() {
                        return Some(Ok(piece));
                    }
                }
                Err(err) => {
                    self.events = None;
                    tracing::warn!(error = %err, "generation failed");
                    let error = match err {
                        AssembleError::Cancelled => ApiError::unavailable(err.to_string()),
                        AssembleError::Detokenize(_) => ApiError::internal(err.to_string()),
                    };
                    return Some(Err(error));
                }
            }
        }
    }

    /// Runs the generation to its end. Dropping this future (client gone) cancels it.
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        while let Some(piece) = self.next_piece().await {
            let piece = piece?;
            text.push_str(&piece.text);
            logprobs.extend(piece.logprobs);
            if let Some((finish, usage)) = piece.finish {
                return Ok(Collected {
                    text,
                    logprobs,
                    finish,
                    usage,
                });
            }
        }
        Err(ApiError::internal("The generation ended unexpectedly."))
    }
}
