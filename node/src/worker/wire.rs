//! What travels on the `worker.generate` stream (shared by the worker and the frontend) and on
//! the `worker.prefill` stream (between a decode worker and a prefill worker).

use serde::{Deserialize, Serialize};
use stator_gpu::backend::KvLayout;
use stator_gpu::engine::SubmitError;
use stator_gpu::request::{EngineEvent, GenerateRequest};
use stator_raft::model::WorkerId;

/// Name of the raw stream the worker serves.
pub const GENERATE_STREAM: &str = "worker.generate";

/// The caller's first (and only) frame: run `request` under the lease of `request_id` at
/// `epoch`. `request.generated` carries the tokens already delivered before a migration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerateHeader {
    pub request_id: String,
    pub epoch: u64,
    pub request: GenerateRequest,
    /// The router's choice of a prefill worker: the owner pulls the prompt's KV from it
    /// instead of computing it. `None`: the owner prefills (short prompt, or a resumed stream).
    pub prefill: Option<WorkerId>,
}

/// The worker's frames: engine events, or one refusal that ends the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WorkerFrame {
    /// The engine admitted the request; events follow.
    Accepted,
    Event(EngineEvent),
    /// The engine would not admit the request (full queue, prompt too long, invalid): the
    /// frontend answers its client as a local engine would (429, 400).
    Rejected(Rejection),
    /// The worker will not (or no longer) stream for this lease; nothing was generated after it.
    Refused(String),
}

/// Why an engine did not admit a request, as the frontend needs it to answer the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    QueueFull,
    PromptTooLong { tokens: usize, max: usize },
    Invalid(String),
    ShuttingDown,
}

impl From<SubmitError> for Rejection {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::QueueFull { .. } => Self::QueueFull,
            SubmitError::PromptTooLong { tokens, max } => Self::PromptTooLong { tokens, max },
            SubmitError::Invalid(message) => Self::Invalid(message),
            SubmitError::Shutdown => Self::ShuttingDown,
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::QueueFull => write!(f, "the worker's queue is full"),
            Self::PromptTooLong { tokens, max } => {
                write!(f, "the prompt has {tokens} tokens, the limit is {max}")
            }
            Self::Invalid(message) => write!(f, "invalid request: {message}"),
            Self::ShuttingDown => write!(f, "the worker is shutting down"),
        }
    }
}

/// Name of the raw stream a worker serves to prefill a prompt for another worker and push its
/// KV blocks back.
pub const PREFILL_STREAM: &str = "worker.prefill";

/// The decode worker's only frame on a `worker.prefill` stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrefillHeader {
    /// The lease key of the request being served, and its epoch (for logs and engine ids).
    pub request_id: String,
    pub epoch: u64,
    /// Served model name; the prefill worker refuses another model.
    pub model: String,
    /// The decode worker's KV geometry; blocks move only between equal layouts.
    pub layout: KvLayout,
    /// Whole blocks of the prompt (the decode worker computes the rest itself).
    pub tokens: Vec<u32>,
    /// The decode worker already holds blocks `0..from_block`: only the rest is sent.
    pub from_block: u32,
    /// How long the decode worker waits for the whole transfer, in milliseconds: later blocks
    /// would be thrown away, so the prefill worker stops working on them then.
    pub deadline_ms: u64,
}

/// The prefill worker's frames: `Accepted`, then `Blocks` (each followed by one raw frame
/// holding exactly `count` blocks), then `End`; or one `Refused` at any point, ending it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PrefillFrame {
    Accepted { first_block: u32, num_blocks: u32 },
    Blocks { first_block: u32, count: u32 },
    End,
    Refused(PrefillRefusal),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PrefillRefusal {
    #[error("this worker serves model {served:?}, not {asked:?}")]
    ModelMismatch { served: String, asked: String },
    #[error("KV layouts differ: this worker has {served:?}, the caller {asked:?}")]
    LayoutMismatch { served: KvLayout, asked: KvLayout },
    #[error("the prefill request is invalid: {0}")]
    Invalid(String),
    #[error("the prefill worker cannot take it now: {0}")]
    Busy(String),
    #[error("the prefill failed: {0}")]
    Failed(String),
}

impl PrefillRefusal {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ModelMismatch { .. } => "model_mismatch",
            Self::LayoutMismatch { .. } => "layout_mismatch",
            Self::Invalid(_) => "invalid",
            Self::Busy(_) => "busy",
            Self::Failed(_) => "prefill_failed",
        }
    }
}
