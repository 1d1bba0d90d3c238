//! What a caller asks of the engine and what the engine streams back.
//!
//! Token-level only: text (chat templates, detokenization, stop strings) is the frontend's job,
//! so a request can move between workers as token ids plus sampling state.

use serde::{Deserialize, Serialize};

/// Sampling controls, OpenAI-compatible. Randomness is keyed by `(seed, absolute position of
/// the sampled token)`, so a request resumed elsewhere with the same prompt, the tokens already
/// generated and the same seed continues exactly as it would have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means off.
    pub top_k: usize,
    /// 1.0 means off.
    pub top_p: f32,
    /// 0.0 means off.
    pub min_p: f32,
    /// 1.0 means off (multiplicative, over prompt and output tokens, as in vLLM).
    pub repetition_penalty: f32,
    /// 0.0 means off (additive, over output tokens).
    pub frequency_penalty: f32,
    /// 0.0 means off (additive, over output tokens).
    pub presence_penalty: f32,
    pub seed: u64,
    /// Tokens to generate in total, counting ones already generated before a resume.
    pub max_tokens: usize,
    /// Extra ids that end the sequence (the model's EOS ids end it unless `ignore_eos`).
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Return the sampled token's logprob and this many top alternatives (`None`: no logprobs).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0,
            max_tokens: 16,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

/// One generation request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// Unique id (the frontend's request id).
    pub id: String,
    pub prompt: Vec<u32>,
    /// Tokens generated before this request was (re)started elsewhere; they are appended to the
    /// prompt for prefill and count towards `max_tokens`. The next token emitted has index
    /// `generated.len()`.
    pub generated: Vec<u32>,
    pub params: SamplingParams,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: u32,
    pub logprob: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// EOS or a stop token id.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
    /// Cancelled by the caller (client disconnect, stop string matched upstream).
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EngineEvent {
    /// A sampled token. `index` counts output tokens from 0 across resumes.
    Token {
        index: usize,
        token: u32,
        logprobs: Option<TokenLogprobs>,
    },
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Prompt tokens served from the prefix cache.
        cached_tokens: usize,
    },
    /// The request failed inside the engine (message for the client).
    Failed { message: String },
}
