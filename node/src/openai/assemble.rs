//! Engine tokens → client text: incremental detokenization, end-of-sequence tokens hidden,
//! stop strings cut (a partial match is held back until it resolves), logprobs rendered.
//! Plain state, no I/O: the streaming and non-streaming paths both drive it.

use std::sync::Arc;

use stator_gpu::request::{FinishReason, TokenLogprobs};
use stator_gpu::tokenizer::{StopMatcher, StreamDecoder, Tokenizer};

use super::types::Usage;

/// Why the completion ended, as OpenAI spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// One alternative of a token's logprob entry, already detokenized.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedTop {
    pub text: String,
    pub logprob: f32,
}

/// A generated token's logprob entry, already detokenized.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedLogprob {
    pub text: String,
    pub logprob: f32,
    pub top: Vec<RenderedTop>,
}

/// What one engine event produced for the client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Piece {
    /// Text that is final (never retracted by a later stop-string match).
    pub text: String,
    pub logprobs: Vec<RenderedLogprob>,
    /// Set on the last piece: the generation is over and its stream must be dropped.
    pub finish: Option<(Finish, Usage)>,
}

impl Piece {
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.logprobs.is_empty() && self.finish.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("detokenizing the output failed: {0}")]
    Detokenize(String),
    #[error("the generation was cancelled by the server")]
    Cancelled,
}

pub struct TextAssembler {
    tokenizer: Arc<Tokenizer>,
    decoder: StreamDecoder,
    stops: StopMatcher,
    /// Ids whose text never reaches the client (EOS, stop_token_ids).
    hidden: Vec<u32>,
    want_logprobs: bool,
    prompt_tokens: usize,
    completion_tokens: usize,
    finished: bool,
}

impl TextAssembler {
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        stops: Vec<String>,
        stop_token_ids: &[u32],
        want_logprobs: bool,
        prompt_tokens: usize,
    ) -> Self {
        let mut hidden: Vec<u32> = tokenizer.eos_ids().to_vec();
        hidden.extend_from_slice(stop_token_ids);
        Self {
            decoder: StreamDecoder::new(Arc::clone(&tokenizer), true),
            stops: StopMatcher::new(stops),
            tokenizer,
            hidden,
            want_logprobs,
            prompt_tokens,
            completion_tokens: 0,
            finished: false,
        }
    }

    pub fn wants_logprobs(&self) -> bool {
        self.want_logprobs
    }

    /// A sampled token. When its text completes a stop string the piece carries the finish and
    /// the caller must drop the engine stream (the rest of the generation is unwanted).
    pub fn on_token(
        &mut self,
        token: u32,
        logprobs: Option<&TokenLogprobs>,
    ) -> Result<Piece, AssembleError> {
        if self.finished {
            return Ok(Piece::default());
        }
        self.completion_tokens += 1;
        let mut piece = Piece::default();
        if self.want_logprobs {
            if let Some(entry) = logprobs {
                piece.logprobs.push(self.render_logprob(token, entry)?);
            }
        }
        if self.hidden.contains(&token) {
            return Ok(piece);
        }
        let delta = self
            .decoder
            .push(token)
            .map_err(|e| AssembleError::Detokenize(e.to_string()))?;
        let outcome = self.stops.push(&delta);
        piece.text = outcome.emit;
        if outcome.stopped {
            self.finished = true;
            // The engine's cached-token count arrives only with `Finished`, which a cancelled
            // sequence never sends.
            piece.finish = Some((
                Finish::Stop,
                Usage::new(self.prompt_tokens, self.completion_tokens, 0),
            ));
        }
        Ok(piece)
    }

    /// The engine finished: flush the detokenizer and any held-back partial stop match.
    pub fn on_finished(
        &mut self,
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        cached_tokens: usize,
    ) -> Result<Piece, AssembleError> {
        if self.finished {
            return Ok(Piece::default());
        }
        self.finished = true;
        let mut finish = match reason {
            FinishReason::Stop => Finish::Stop,
            FinishReason::Length => Finish::Length,
            FinishReason::Cancelled => return Err(AssembleError::Cancelled),
        };
        let tail = self
            .decoder
            .finish()
            .map_err(|e| AssembleError::Detokenize(e.to_string()))?;
        let outcome = self.stops.push(&tail);
        let mut text = outcome.emit;
        if outcome.stopped {
            finish = Finish::Stop;
        } else {
            text.push_str(&self.stops.finish());
        }
        Ok(Piece {
            text,
            logprobs: Vec::new(),
            finish: Some((
                finish,
                Usage::new(prompt_tokens, completion_tokens, cached_tokens),
            )),
        })
    }

    fn render_logprob(
        &self,
        token: u32,
        entry: &TokenLogprobs,
    ) -> Result<RenderedLogprob, AssembleError> {
        let top = entry
            .top
            .iter()
            .map(|alt| {
                Ok(RenderedTop {
                    text: self.token_text(alt.token)?,
                    logprob: alt.logprob,
                })
            })
            .collect::<Result<Vec<_>, AssembleError>>()?;
        Ok(RenderedLogprob {
            text: self.token_text(token)?,
            logprob: entry.logprob,
            top,
        })
    }

    fn token_text(&self, token: u32) -> Result<String, AssembleError> {
        self.tokenizer
            .decode(&[token], false)
            .map_err(|e| AssembleError::Detokenize(e.to_string()))
    }
}
