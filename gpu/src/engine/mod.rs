//! The engine runtime: one OS thread per backend running schedule → forward → sample → emit,
//! driven through a cloneable [`EngineHandle`].
//!
//! The thread blocks on a command channel when idle and never blocks on a consumer: each
//! request streams into its own unbounded channel, and a closed channel cancels the request.
//! Requests, cancellations and queries are [`Command`]s posted to the thread; queries answer on
//! a oneshot channel. KV transfer for disaggregated prefill (`transfer.rs`) takes the same path:
//! reservations, imports and exports run on the engine thread, so block ids never leave it.

mod handle;
mod stats;
mod transfer;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;

use parking_lot::Mutex;

pub use handle::{EngineHandle, EventStream, QueryError, SubmitError};
pub use stats::EngineStats;
pub use transfer::{ExportedBlocks, KvExport, KvReservation, TransferError};

use crate::backend::Backend;
use crate::kv::{BlockHash, BlockManager, KvEvent, SeqId};
use crate::request::{EngineEvent, GenerateRequest};
use crate::scheduler::{Scheduler, SchedulerConfig};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub max_num_seqs: usize,
    pub max_batch_tokens: usize,
    /// Requests admitted but not yet started; more are refused with `QueueFull`.
    pub max_queue: usize,
    pub enable_prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 64,
            max_batch_tokens: 512,
            max_queue: 256,
            enable_prefix_caching: true,
        }
    }
}

/// How many KV events a slow subscriber may fall behind before it sees `Lagged`.
const KV_EVENT_BUFFER: usize = 4096;

pub(crate) enum Command {
    Submit {
        seq: SeqId,
        request: GenerateRequest,
        events: tokio::sync::mpsc::UnboundedSender<EngineEvent>,
        /// A reservation holding the prompt's prefix, released once the request is admitted.
        prefix: Option<SeqId>,
        /// Export the prompt's blocks after prefill instead of generating.
        export: Option<ExportOrder>,
    },
    /// Holds blocks for every full block of `tokens` under the reservation `id`.
    Reserve {
        id: SeqId,
        tokens: Vec<u32>,
        reply: tokio::sync::oneshot::Sender<Result<ReservedBlocks, TransferError>>,
    },
    ImportBlocks {
        id: SeqId,
        first_block: usize,
        bytes: Vec<u8>,
        reply: tokio::sync::oneshot::Sender<Result<(), TransferError>>,
    },
    CompleteReservation {
        id: SeqId,
        reply: tokio::sync::oneshot::Sender<Result<(), TransferError>>,
    },
    ReleaseReservation {
        id: SeqId,
    },
    /// `notify`: the caller still listens and gets `Finished { Cancelled }`.
    Cancel {
        seq: SeqId,
        notify: bool,
    },
    BlockHashes {
        request_id: String,
        reply: tokio::sync::oneshot::Sender<Option<Vec<BlockHash>>>,
    },
    Shutdown,
}

/// Where a prefill-for-export request sends its blocks.
pub(crate) struct ExportOrder {
    pub from_block: usize,
    pub reply: tokio::sync::oneshot::Sender<Result<ExportedBlocks, TransferError>>,
}

/// What a reservation got: leading cached blocks and the total.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReservedBlocks {
    pub cached: usize,
    pub total: usize,
}

/// State the handle and the engine thread share.
pub(crate) struct Shared {
    pub commands: std::sync::mpsc::Sender<Command>,
    pub stats: Mutex<EngineStats>,
    /// Submitted requests that have not started running yet.
    pub queued: AtomicUsize,
    pub max_queue: usize,
    pub max_model_len: usize,
    pub prefix_caching: bool,
    pub kv_layout: crate::backend::KvLayout,
    pub model_config: crate::config::ModelConfig,
    pub kv_events: tokio::sync::broadcast::Sender<KvEvent>,
    /// Request id → sequence id of every request in flight.
    pub active: Mutex<std::collections::HashMap<String, SeqId>>,
    pub next_seq: AtomicU64,
    pub shut_down: AtomicBool,
    /// Why the engine cannot serve at all (bad backend geometry, no thread).
    pub unavailable: std::sync::OnceLock<String>,
}

pub struct Engine;

impl Engine {
    /// Starts the engine thread around `backend`. Zero limits in `cfg` are raised to 1.
    pub fn start(
        backend: Box<dyn Backend>,
        cfg: EngineConfig,
        eos_token_ids: Vec<u32>,
    ) -> EngineHandle {
        let kv_layout = backend.kv_layout().clone();
        let model_config = backend.config().clone();
        let num_blocks = backend.num_kv_blocks();
        // A lone sequence must always fit, or preempting it could never make room.
        let max_model_len = model_config
            .max_position_embeddings
            .min(num_blocks * kv_layout.block_size);
        let sched_cfg = SchedulerConfig {
            max_num_seqs: at_least_one("max_num_seqs", cfg.max_num_seqs),
            max_batch_tokens: at_least_one("max_batch_tokens", cfg.max_batch_tokens),
            max_model_len,
            eos_token_ids,
        };
        let (commands, inbox) = std::sync::mpsc::channel();
        let (kv_events, _) = tokio::sync::broadcast::channel(KV_EVENT_BUFFER);
        let kv = BlockManager::new(num_blocks, kv_layout.block_size, cfg.enable_prefix_caching);
        let backend_name = backend.name();
        let stats = EngineStats {
            kv_blocks_total: num_blocks,
            ..EngineStats::default()
        };
        let shared = Arc::new(Shared {
            commands,
            stats: Mutex::new(stats),
            queued: AtomicUsize::new(0),
            max_queue: at_least_one("max_queue", cfg.max_queue),
            max_model_len,
            prefix_caching: cfg.enable_prefix_caching,
            kv_layout,
            model_config,
            kv_events,
            active: Mutex::new(Default::default()),
            next_seq: AtomicU64::new(1),
            shut_down: AtomicBool::new(false),
            unavailable: std::sync::OnceLock::new(),
        });
        let started = kv
            .map_err(|e| format!("backend {backend_name}: {e}"))
            .and_then(|kv| {
                let scheduler = Scheduler::new(sched_cfg, kv);
                let worker = worker::Worker::new(backend, scheduler, Arc::clone(&shared), inbox);
                std::thread::Builder::new()
                    .name("stator-engine".into())
                    .spawn(move || worker.run())
                    .map_err(|e| format!("cannot start the engine thread: {e}"))
            });
        if let Err(reason) = started {
            tracing::error!(%reason, "engine unavailable");
            let _ = shared.unavailable.set(reason);
        }
        EngineHandle::new(shared)
    }
}

fn at_least_one(name: &str, value: usize) -> usize {
    if value == 0 {
        tracing::warn!(setting = name, "engine setting of 0 raised to 1");
    }
    value.max(1)
}

#[cfg(test)]
mod transfer_tests;
