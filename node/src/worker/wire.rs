//! What travels on a `worker.generate` stream, shared by the worker and the frontend.

use serde::{Deserialize, Serialize};
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
    Event(EngineEvent),
    /// The worker will not (or no longer) stream for this lease; nothing was generated after it.
    Refused(String),
}
