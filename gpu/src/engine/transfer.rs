//! KV transfer between engines (disaggregated prefill): a decode engine reserves blocks for a
//! prompt prefix, writes KV computed elsewhere into them and hands them to a request; a
//! prefill engine computes a prompt and exports its blocks.
//!
//! Both sides talk to the engine thread through commands, so block ids never leave it and
//! nothing can evict a block between its import and its use.

use std::time::Duration;

use tokio::sync::oneshot;

use super::handle::EventStream;
use super::Command;
use crate::kv::SeqId;
use crate::request::EngineEvent;

/// How long an import or completion waits for the engine thread (one forward pass at most).
pub(super) const TRANSFER_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("out of KV blocks: {needed} needed, {available} available")]
    OutOfBlocks { needed: usize, available: usize },
    #[error("prefix caching is off on this engine: transferred blocks could not be reused")]
    PrefixCachingOff,
    #[error("bad KV chunk: {0}")]
    BadChunk(String),
    #[error("the reservation still misses blocks {next}..{total}")]
    Incomplete { next: usize, total: usize },
    #[error("invalid prefill request: {0}")]
    Invalid(String),
    #[error("the backend refused the KV data: {0}")]
    Backend(String),
    #[error("the prefill failed: {0}")]
    PrefillFailed(String),
    #[error("the engine did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the engine is shut down")]
    Shutdown,
}

/// Blocks held on this engine for a prompt prefix whose KV is computed elsewhere. Blocks
/// `first_block()..total_blocks()` must be imported, in order, then [`Self::complete`] publishes
/// them in the prefix cache. Dropping it (unless handed to
/// [`super::EngineHandle::submit_with_prefix`]) frees the blocks.
pub struct KvReservation {
    pub(super) id: SeqId,
    pub(super) commands: std::sync::mpsc::Sender<Command>,
    pub(super) first_block: usize,
    pub(super) total_blocks: usize,
    pub(super) bytes_per_block: usize,
    /// Handed over to a request, which releases it once admitted.
    pub(super) handed_over: bool,
}

impl std::fmt::Debug for KvReservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvReservation")
            .field("id", &self.id)
            .field("first_block", &self.first_block)
            .field("total_blocks", &self.total_blocks)
            .finish_non_exhaustive()
    }
}

impl KvReservation {
    /// Leading blocks already cached here: the transfer starts after them.
    pub fn first_block(&self) -> usize {
        self.first_block
    }

    /// Full blocks of the reserved prefix.
    pub fn total_blocks(&self) -> usize {
        self.total_blocks
    }

    /// Blocks the transfer must bring.
    pub fn blocks_needed(&self) -> usize {
        self.total_blocks - self.first_block
    }

    pub fn bytes_per_block(&self) -> usize {
        self.bytes_per_block
    }

    /// Writes `bytes` (whole blocks in the exchange layout) into blocks `first_block..`. Chunks
    /// must arrive in order; a bad chunk is refused and changes nothing.
    pub async fn import(&self, first_block: usize, bytes: Vec<u8>) -> Result<(), TransferError> {
        let (reply, answer) = oneshot::channel();
        self.ask(
            Command::ImportBlocks {
                id: self.id,
                first_block,
                bytes,
                reply,
            },
            answer,
        )
        .await
    }

    /// Marks every block written: they become a cached prefix (KV events `Stored`), exactly
    /// as if this engine had prefilled them. Fails while blocks are missing.
    pub async fn complete(&self) -> Result<(), TransferError> {
        let (reply, answer) = oneshot::channel();
        self.ask(Command::CompleteReservation { id: self.id, reply }, answer)
            .await
    }

    async fn ask(
        &self,
        command: Command,
        answer: oneshot::Receiver<Result<(), TransferError>>,
    ) -> Result<(), TransferError> {
        self.commands
            .send(command)
            .map_err(|_| TransferError::Shutdown)?;
        match tokio::time::timeout(TRANSFER_DEADLINE, answer).await {
            Err(_) => Err(TransferError::Timeout(TRANSFER_DEADLINE)),
            Ok(Err(_)) => Err(TransferError::Shutdown),
            Ok(Ok(result)) => result,
        }
    }
}

impl Drop for KvReservation {
    fn drop(&mut self) {
        if !self.handed_over {
            let _ = self
                .commands
                .send(Command::ReleaseReservation { id: self.id });
        }
    }
}

/// KV blocks `first_block..first_block + num_blocks` of a prefilled prompt, in the exchange
/// layout of [`crate::backend::KvLayout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedBlocks {
    pub first_block: usize,
    pub num_blocks: usize,
    pub bytes: Vec<u8>,
}

/// A prompt being prefilled for export. Dropping it before the result cancels the prefill
/// and frees its sequence (its computed blocks stay in this engine's prefix cache).
pub struct KvExport {
    pub(super) blocks: oneshot::Receiver<Result<ExportedBlocks, TransferError>>,
    pub(super) events: EventStream,
}

impl KvExport {
    /// Waits for the prefill and its export; callers bound it with their own deadline.
    pub async fn wait(mut self) -> Result<ExportedBlocks, TransferError> {
        if let Ok(result) = (&mut self.blocks).await {
            return result;
        }
        // The engine dropped the export without a result: the sequence failed or ended.
        while let Some(event) = self.events.next().await {
            match event {
                EngineEvent::Failed { message } => {
                    return Err(TransferError::PrefillFailed(message))
                }
                EngineEvent::Finished { reason, .. } => {
                    return Err(TransferError::PrefillFailed(format!(
                        "the prefill ended ({reason:?}) without exporting"
                    )))
                }
                EngineEvent::Token { .. } => {}
            }
        }
        Err(TransferError::Shutdown)
    }
}
