//! The cloneable handle callers use to talk to the engine thread, and the per-request stream.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::transfer::TRANSFER_DEADLINE;
use super::{Command, EngineStats, ExportOrder, KvExport, KvReservation, Shared, TransferError};
use crate::backend::KvLayout;
use crate::config::ModelConfig;
use crate::kv::{BlockHash, KvEvent, SeqId};
use crate::request::{EngineEvent, GenerateRequest, SamplingParams};
use crate::sampler::validate_params;

/// How long a query waits for the engine thread (one slow forward pass at most).
const QUERY_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the engine queue is full ({max_queue} requests waiting)")]
    QueueFull { max_queue: usize },
    #[error("prompt of {tokens} tokens leaves no room to generate within the {max}-token context")]
    PromptTooLong { tokens: usize, max: usize },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the engine is shut down")]
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("no request {0} in flight")]
    UnknownRequest(String),
    #[error("the engine did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the engine is shut down")]
    Shutdown,
}

#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl EngineHandle {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Admits a request (bounded queue). Drop the returned stream to cancel (client disconnect):
    /// the engine notices within one step and frees the sequence's blocks.
    pub fn submit(&self, request: GenerateRequest) -> Result<EventStream, SubmitError> {
        self.enqueue(request, None, None)
    }

    /// Reserves blocks for the KV of `tokens` (every full block of it; a partial tail is
    /// ignored) that another engine computes: cached blocks are reused, the rest allocated,
    /// all or nothing. Give it the full-block part of the prompt minus its last token, so the
    /// request still computes that token (and samples) here.
    pub async fn reserve_prefix(&self, tokens: &[u32]) -> Result<KvReservation, TransferError> {
        let shared = &self.shared;
        if shared.unavailable.get().is_some() || shared.shut_down.load(Ordering::Acquire) {
            return Err(TransferError::Shutdown);
        }
        if !shared.prefix_caching {
            return Err(TransferError::PrefixCachingOff);
        }
        let id = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let command = Command::Reserve {
            id,
            tokens: tokens.to_vec(),
            reply,
        };
        shared
            .commands
            .send(command)
            .map_err(|_| TransferError::Shutdown)?;
        let reserved = match tokio::time::timeout(TRANSFER_DEADLINE, answer).await {
            Err(_) => {
                // It may still be granted after we stopped waiting: release whatever comes.
                let _ = shared.commands.send(Command::ReleaseReservation { id });
                return Err(TransferError::Timeout(TRANSFER_DEADLINE));
            }
            Ok(Err(_)) => return Err(TransferError::Shutdown),
            Ok(Ok(result)) => result?,
        };
        Ok(KvReservation {
            id,
            commands: shared.commands.clone(),
            first_block: reserved.cached,
            total_blocks: reserved.total,
            bytes_per_block: shared.kv_layout.bytes_per_block(),
            handed_over: false,
        })
    }

    /// Like [`Self::submit`], with `prefix` holding (part of) the prompt's KV: once the request
    /// is admitted it finds those blocks in the prefix cache and the reservation is released.
    /// An incomplete reservation is simply freed: the request then prefills here.
    pub fn submit_with_prefix(
        &self,
        request: GenerateRequest,
        mut prefix: KvReservation,
    ) -> Result<EventStream, SubmitError> {
        let events = self.enqueue(request, Some(prefix.id), None)?;
        prefix.handed_over = true;
        Ok(events)
    }

    /// Prefills `tokens` (whole blocks) through the normal scheduler, batched with other work
    /// and reusing this engine's prefix cache, then exports blocks `from_block..` of it instead
    /// of generating. The computed blocks stay cached here. Drop the result to cancel.
    pub fn prefill_export(
        &self,
        request_id: &str,
        tokens: Vec<u32>,
        from_block: usize,
    ) -> Result<KvExport, SubmitError> {
        let block_size = self.shared.kv_layout.block_size;
        let num_blocks = tokens.len() / block_size;
        if tokens.is_empty() || !tokens.len().is_multiple_of(block_size) {
            return Err(SubmitError::Invalid(format!(
                "{} tokens are not a whole number of {block_size}-token blocks",
                tokens.len()
            )));
        }
        if from_block >= num_blocks {
            return Err(SubmitError::Invalid(format!(
                "block {from_block} is past the {num_blocks} blocks of the prompt"
            )));
        }
        let request = GenerateRequest {
            id: request_id.to_string(),
            prompt: tokens,
            generated: Vec::new(),
            params: SamplingParams {
                temperature: 0.0,
                max_tokens: 1,
                ignore_eos: true,
                ..SamplingParams::default()
            },
        };
        let (reply, blocks) = oneshot::channel();
        let events = self.enqueue(request, None, Some(ExportOrder { from_block, reply }))?;
        Ok(KvExport { blocks, events })
    }

    fn enqueue(
        &self,
        request: GenerateRequest,
        prefix: Option<SeqId>,
        export: Option<ExportOrder>,
    ) -> Result<EventStream, SubmitError> {
        let shared = &self.shared;
        if let Some(reason) = shared.unavailable.get() {
            return Err(SubmitError::Invalid(format!(
                "the engine cannot serve: {reason}"
            )));
        }
        if shared.shut_down.load(Ordering::Acquire) {
            return Err(SubmitError::Shutdown);
        }
        self.validate(&request)?;
        let mut active = shared.active.lock();
        if active.contains_key(&request.id) {
            return Err(SubmitError::Invalid(format!(
                "request id {:?} is already in flight",
                request.id
            )));
        }
        let reserved = shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < shared.max_queue).then_some(queued + 1)
            });
        if reserved.is_err() {
            return Err(SubmitError::QueueFull {
                max_queue: shared.max_queue,
            });
        }
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let (events, receiver) = mpsc::unbounded_channel();
        let request_id = request.id.clone();
        if shared
            .commands
            .send(Command::Submit {
                seq,
                request,
                events,
                prefix,
                export,
            })
            .is_err()
        {
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::Shutdown);
        }
        active.insert(request_id, seq);
        Ok(EventStream {
            receiver,
            seq,
            commands: shared.commands.clone(),
            ended: false,
        })
    }

    fn validate(&self, request: &GenerateRequest) -> Result<(), SubmitError> {
        if request.prompt.is_empty() {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        let vocab = self.shared.model_config.vocab_size;
        if let Some(bad) = request
            .prompt
            .iter()
            .chain(&request.generated)
            .find(|&&t| t as usize >= vocab)
        {
            return Err(SubmitError::Invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let tokens = request.prompt.len() + request.generated.len();
        if tokens >= self.shared.max_model_len {
            return Err(SubmitError::PromptTooLong {
                tokens,
                max: self.shared.max_model_len,
            });
        }
        validate_params(&request.params).map_err(SubmitError::Invalid)?;
        if request.generated.len() >= request.params.max_tokens {
            return Err(SubmitError::Invalid(format!(
                "max_tokens ({}) is already reached by {} generated tokens",
                request.params.max_tokens,
                request.generated.len()
            )));
        }
        Ok(())
    }

    /// Stops a request; its stream ends with `Finished { reason: Cancelled }`.
    pub fn cancel(&self, request_id: &str) {
        let seq = self.shared.active.lock().get(request_id).copied();
        if let Some(seq) = seq {
            let _ = self
                .shared
                .commands
                .send(Command::Cancel { seq, notify: true });
        }
    }

    pub fn stats(&self) -> EngineStats {
        self.shared.stats.lock().clone()
    }

    pub fn kv_layout(&self) -> KvLayout {
        self.shared.kv_layout.clone()
    }

    pub fn model_config(&self) -> ModelConfig {
        self.shared.model_config.clone()
    }

    /// The longest prompt + output a request may reach here.
    pub fn max_model_len(&self) -> usize {
        self.shared.max_model_len
    }

    /// Prefix-cache changes, for routers. A subscriber more than a few thousand events behind
    /// gets `Lagged` and should resynchronise.
    pub fn subscribe_kv_events(&self) -> broadcast::Receiver<KvEvent> {
        self.shared.kv_events.subscribe()
    }

    /// Chained hashes of the KV blocks a running request has computed so far.
    pub async fn kv_block_hashes(&self, request_id: &str) -> Result<Vec<BlockHash>, QueryError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::BlockHashes {
            request_id: request_id.to_string(),
            reply,
        };
        self.shared
            .commands
            .send(command)
            .map_err(|_| QueryError::Shutdown)?;
        match tokio::time::timeout(QUERY_DEADLINE, answer).await {
            Err(_) => Err(QueryError::Timeout(QUERY_DEADLINE)),
            Ok(Err(_)) => Err(QueryError::Shutdown),
            Ok(Ok(None)) => Err(QueryError::UnknownRequest(request_id.to_string())),
            Ok(Ok(Some(hashes))) => Ok(hashes),
        }
    }

    /// Stops the engine thread after its current step; requests in flight fail.
    pub fn shutdown(&self) {
        self.shared.shut_down.store(true, Ordering::Release);
        let _ = self.shared.commands.send(Command::Shutdown);
    }
}

/// The events of one request. Dropping it before the end cancels the request.
pub struct EventStream {
    receiver: mpsc::UnboundedReceiver<EngineEvent>,
    seq: SeqId,
    commands: std::sync::mpsc::Sender<Command>,
    ended: bool,
}

impl EventStream {
    /// The next event; `None` after the final one (`Finished` or `Failed`).
    pub async fn next(&mut self) -> Option<EngineEvent> {
        let event = self.receiver.recv().await;
        if matches!(
            event,
            None | Some(EngineEvent::Finished { .. } | EngineEvent::Failed { .. })
        ) {
            self.ended = true;
        }
        event
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.commands.send(Command::Cancel {
                seq: self.seq,
                notify: false,
            });
        }
    }
}
