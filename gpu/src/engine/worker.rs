//! The engine thread: drains commands, runs one scheduled forward pass at a time, samples and
//! streams tokens. Failures end the affected requests, never the thread.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use super::{
    stats, Command, EngineStats, ExportOrder, ExportedBlocks, ReservedBlocks, Shared, TransferError,
};
use crate::backend::{Backend, Logits};
use crate::kv::{KvError, SeqId};
use crate::request::{EngineEvent, FinishReason, GenerateRequest, TokenLogprobs};
use crate::sampler;
use crate::scheduler::{NewSequence, ScheduledBatch, Scheduler, SeqFinish};

/// How long an idle engine sleeps between checks of the shutdown flag.
const IDLE_WAIT: Duration = Duration::from_millis(100);

struct Request {
    id: String,
    events: UnboundedSender<EngineEvent>,
    /// Still counted in `Shared::queued` (not started yet).
    queued: bool,
    /// Set for a prefill whose blocks are exported instead of generating.
    export: Option<ExportOrder>,
}

/// Blocks held for KV that arrives from another engine.
struct Reservation {
    /// The reserved prefix, whole blocks only.
    tokens: Vec<u32>,
    /// The next block an import must start at (imports arrive in order).
    next_block: usize,
    total_blocks: usize,
    completed: bool,
}

pub(super) struct Worker {
    backend: Box<dyn Backend>,
    scheduler: Scheduler,
    shared: Arc<Shared>,
    inbox: Receiver<Command>,
    requests: HashMap<SeqId, Request>,
    reservations: HashMap<SeqId, Reservation>,
    /// (request, reservation): the reservation is released once the request holds its blocks.
    handoffs: Vec<(SeqId, SeqId)>,
    steps_total: u64,
    tokens_generated_total: u64,
}

impl Worker {
    pub(super) fn new(
        backend: Box<dyn Backend>,
        scheduler: Scheduler,
        shared: Arc<Shared>,
        inbox: Receiver<Command>,
    ) -> Self {
        Self {
            backend,
            scheduler,
            shared,
            inbox,
            requests: HashMap::new(),
            reservations: HashMap::new(),
            handoffs: Vec::new(),
            steps_total: 0,
            tokens_generated_total: 0,
        }
    }

    pub(super) fn run(mut self) {
        tracing::info!(backend = %self.backend.name(), "engine started");
        loop {
            if !self.drain_commands() || self.shared.shut_down.load(Ordering::Acquire) {
                break;
            }
            // The worker's own reference is the last one: no handle can submit again, so stop
            // once the requests still streaming are done.
            if Arc::strong_count(&self.shared) == 1 && self.requests.is_empty() {
                break;
            }
            if self.scheduler.has_work() {
                self.step();
            }
            self.release_handoffs();
            self.forward_kv_events();
            self.publish_stats();
        }
        let in_flight: Vec<SeqId> = self.requests.keys().copied().collect();
        for seq in in_flight {
            self.fail(seq, "the engine shut down");
        }
        self.publish_stats();
        tracing::info!("engine stopped");
    }

    /// Handles every pending command, waiting for one when idle. False: time to stop.
    fn drain_commands(&mut self) -> bool {
        loop {
            let command = if self.scheduler.has_work() {
                match self.inbox.try_recv() {
                    Ok(command) => command,
                    Err(TryRecvError::Empty) => return true,
                    Err(TryRecvError::Disconnected) => return false,
                }
            } else {
                match self.inbox.recv_timeout(IDLE_WAIT) {
                    Ok(command) => command,
                    Err(RecvTimeoutError::Timeout) => return true,
                    Err(RecvTimeoutError::Disconnected) => return false,
                }
            };
            match command {
                Command::Submit {
                    seq,
                    request,
                    events,
                    prefix,
                    export,
                } => self.admit(seq, request, events, prefix, export),
                Command::Reserve { id, tokens, reply } => {
                    let result = self.reserve(id, tokens);
                    // The caller stopped waiting: nobody will ever release it.
                    if reply.send(result).is_err() {
                        self.release_reservation(id);
                    }
                }
                Command::ImportBlocks {
                    id,
                    first_block,
                    bytes,
                    reply,
                } => {
                    let _ = reply.send(self.import(id, first_block, &bytes));
                }
                Command::CompleteReservation { id, reply } => {
                    let _ = reply.send(self.complete(id));
                }
                Command::ReleaseReservation { id } => self.release_reservation(id),
                Command::Cancel { seq, notify } => self.cancel(seq, notify),
                Command::BlockHashes { request_id, reply } => {
                    let seq = self
                        .requests
                        .iter()
                        .find(|(_, r)| r.id == request_id)
                        .map(|(s, _)| *s);
                    let hashes = seq
                        .and_then(|s| self.scheduler.kv().seq_block_hashes(s))
                        .map(<[_]>::to_vec);
                    let _ = reply.send(hashes);
                }
                Command::Shutdown => return false,
            }
        }
    }

    fn admit(
        &mut self,
        seq: SeqId,
        request: GenerateRequest,
        events: UnboundedSender<EngineEvent>,
        prefix: Option<SeqId>,
        export: Option<ExportOrder>,
    ) {
        if let Some(reservation) = prefix {
            if self
                .reservations
                .get(&reservation)
                .is_some_and(|r| r.completed)
            {
                self.handoffs.push((seq, reservation));
            } else {
                // Nothing usable arrived: the request prefills here.
                self.release_reservation(reservation);
            }
        }
        let GenerateRequest {
            id,
            prompt,
            generated,
            params,
        } = request;
        let new = NewSequence {
            id: seq,
            prompt,
            generated,
            params,
        };
        self.requests.insert(
            seq,
            Request {
                id,
                events,
                queued: true,
                export,
            },
        );
        if let Err(e) = self.scheduler.add(new) {
            self.fail(seq, &e.to_string());
        }
    }

    fn cancel(&mut self, seq: SeqId, notify: bool) {
        let Some(finish) = self.scheduler.abort(seq) else {
            return;
        };
        if notify {
            self.end(seq, finish);
        } else {
            self.forget(seq);
        }
    }

    fn step(&mut self) {
        let batch = self.scheduler.schedule();
        if batch.is_empty() {
            self.unblock_head();
            return;
        }
        for step in &batch.steps {
            self.mark_started(step.seq);
        }
        stats::record_preemptions(batch.preempted.len() as u64);
        let started = Instant::now();
        let logits = match self.forward(&batch) {
            Ok(logits) => logits,
            Err(message) => {
                tracing::error!(%message, seqs = batch.steps.len(), "forward pass failed");
                for step in &batch.steps {
                    self.fail(step.seq, &format!("forward pass failed: {message}"));
                }
                return;
            }
        };
        self.export_prefilled(&batch);
        let (sampled, mut logprobs, failed) = self.sample(&batch, &logits);
        let outcomes = self.scheduler.on_step_output(&batch, &sampled);
        for (seq, message) in failed {
            self.fail(seq, &message);
        }
        let generated = outcomes.len() as u64;
        for outcome in outcomes {
            let logprobs = logprobs.remove(&outcome.seq).flatten();
            let event = EngineEvent::Token {
                index: outcome.index,
                token: outcome.token,
                logprobs,
            };
            let delivered = self
                .requests
                .get(&outcome.seq)
                .is_some_and(|r| r.events.send(event).is_ok());
            match outcome.finish {
                Some(finish) => self.end(outcome.seq, finish),
                // The receiver is gone: the client disconnected.
                None if !delivered => self.cancel(outcome.seq, false),
                None => {}
            }
        }
        self.steps_total += 1;
        self.tokens_generated_total += generated;
        stats::record_step(batch.num_tokens(), started.elapsed(), generated);
    }

    /// Runs the backend. A panicking backend fails this batch instead of the engine thread.
    fn forward(&mut self, batch: &ScheduledBatch) -> Result<Logits, String> {
        let steps = self.scheduler.seq_steps(batch);
        let backend = &mut self.backend;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| backend.forward(&steps)));
        drop(steps);
        match result {
            Ok(Ok(logits)) => self.check_logits(batch, logits),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the backend panicked".into()),
        }
    }

    fn check_logits(&self, batch: &ScheduledBatch, logits: Logits) -> Result<Logits, String> {
        let wanted = batch.steps.iter().filter(|s| s.want_logits).count();
        let vocab = self.shared.model_config.vocab_size;
        if logits.rows() != wanted
            || logits.vocab_size != vocab
            || logits.data.len() != wanted * vocab
        {
            return Err(format!(
                "backend returned {} values of {} logits rows for {wanted} rows of {vocab}",
                logits.data.len(),
                logits.vocab_size
            ));
        }
        Ok(logits)
    }

    /// Samples every step that asked for logits. Returns the tokens, their logprobs and the
    /// sequences whose sampling failed.
    #[allow(clippy::type_complexity)]
    fn sample(
        &self,
        batch: &ScheduledBatch,
        logits: &Logits,
    ) -> (
        Vec<(SeqId, u32)>,
        HashMap<SeqId, Option<TokenLogprobs>>,
        Vec<(SeqId, String)>,
    ) {
        let rows: Vec<SeqId> = batch
            .steps
            .iter()
            .filter(|s| s.want_logits)
            .map(|s| s.seq)
            .collect();
        // Rows are independent and a large vocabulary makes each one cost ~0.1-1 ms.
        let scheduler = &self.scheduler;
        let results: Vec<_> = rows
            .par_iter()
            .enumerate()
            .filter_map(|(row, &seq_id)| {
                let seq = scheduler.sequence(seq_id)?;
                let result =
                    sampler::sample(logits.row(row), seq.params(), seq.prompt(), seq.output());
                Some((seq_id, result))
            })
            .collect();
        let mut sampled = Vec::new();
        let mut logprobs = HashMap::new();
        let mut failed = Vec::new();
        for (seq, result) in results {
            match result {
                Ok(s) => {
                    sampled.push((seq, s.token));
                    logprobs.insert(seq, s.logprobs);
                }
                Err(e) => failed.push((seq, format!("sampling failed: {e}"))),
            }
        }
        (sampled, logprobs, failed)
    }

    /// Hands export requests whose prompt just finished computing their blocks, before the
    /// step's output ends them and frees their sequences.
    fn export_prefilled(&mut self, batch: &ScheduledBatch) {
        for step in batch.steps.iter().filter(|s| s.want_logits) {
            let Some(order) = self
                .requests
                .get_mut(&step.seq)
                .and_then(|r| r.export.take())
            else {
                continue;
            };
            let result = self.export_blocks(step.seq, order.from_block);
            let _ = order.reply.send(result);
        }
    }

    fn export_blocks(
        &self,
        seq: SeqId,
        from_block: usize,
    ) -> Result<ExportedBlocks, TransferError> {
        let kv = self.scheduler.kv();
        let lost = || TransferError::PrefillFailed("the sequence lost its KV table".into());
        let prompt_len = self
            .scheduler
            .sequence(seq)
            .ok_or_else(lost)?
            .prompt()
            .len();
        let table = kv.block_table(seq).ok_or_else(lost)?;
        let total = (prompt_len / kv.block_size()).min(table.len());
        let blocks = table.get(from_block..total).ok_or_else(|| {
            TransferError::Invalid(format!("block {from_block} is past the {total} blocks"))
        })?;
        let mut bytes = Vec::new();
        self.backend
            .export_blocks(blocks, &mut bytes)
            .map_err(|e| TransferError::Backend(e.to_string()))?;
        Ok(ExportedBlocks {
            first_block: from_block,
            num_blocks: blocks.len(),
            bytes,
        })
    }

    fn reserve(
        &mut self,
        id: SeqId,
        mut tokens: Vec<u32>,
    ) -> Result<ReservedBlocks, TransferError> {
        let kv = self.scheduler.kv_mut();
        let total = tokens.len() / kv.block_size();
        tokens.truncate(total * kv.block_size());
        let cached = kv.reserve(id, &tokens).map_err(|e| match e {
            KvError::OutOfBlocks { needed, available } => {
                TransferError::OutOfBlocks { needed, available }
            }
            other => TransferError::Invalid(other.to_string()),
        })?;
        self.reservations.insert(
            id,
            Reservation {
                tokens,
                next_block: cached,
                total_blocks: total,
                completed: false,
            },
        );
        Ok(ReservedBlocks { cached, total })
    }

    fn import(&mut self, id: SeqId, first_block: usize, bytes: &[u8]) -> Result<(), TransferError> {
        let per_block = self.shared.kv_layout.bytes_per_block();
        let reservation = self
            .reservations
            .get_mut(&id)
            .ok_or_else(|| TransferError::Invalid(format!("no reservation {id}")))?;
        if reservation.completed {
            return Err(TransferError::BadChunk(
                "the reservation is already complete".into(),
            ));
        }
        if first_block != reservation.next_block {
            return Err(TransferError::BadChunk(format!(
                "chunk starts at block {first_block}, expected block {}",
                reservation.next_block
            )));
        }
        if bytes.is_empty() || !bytes.len().is_multiple_of(per_block) {
            return Err(TransferError::BadChunk(format!(
                "{} bytes are not a whole number of {per_block}-byte blocks",
                bytes.len()
            )));
        }
        let count = bytes.len() / per_block;
        if first_block + count > reservation.total_blocks {
            return Err(TransferError::BadChunk(format!(
                "blocks {first_block}..{} run past the {} reserved",
                first_block + count,
                reservation.total_blocks
            )));
        }
        let table =
            self.scheduler.kv().block_table(id).ok_or_else(|| {
                TransferError::Invalid(format!("reservation {id} holds no blocks"))
            })?;
        self.backend
            .import_blocks(&table[first_block..first_block + count], bytes)
            .map_err(|e| TransferError::Backend(e.to_string()))?;
        reservation.next_block += count;
        Ok(())
    }

    fn complete(&mut self, id: SeqId) -> Result<(), TransferError> {
        let reservation = self
            .reservations
            .get_mut(&id)
            .ok_or_else(|| TransferError::Invalid(format!("no reservation {id}")))?;
        if reservation.next_block < reservation.total_blocks {
            return Err(TransferError::Incomplete {
                next: reservation.next_block,
                total: reservation.total_blocks,
            });
        }
        self.scheduler
            .kv_mut()
            .mark_computed(id, &reservation.tokens)
            .map_err(|e| TransferError::Invalid(e.to_string()))?;
        reservation.completed = true;
        Ok(())
    }

    fn release_reservation(&mut self, id: SeqId) {
        if self.reservations.remove(&id).is_some() {
            self.scheduler.kv_mut().free(id);
        }
    }

    /// Releases the reservations whose request now holds the blocks itself (or is gone).
    fn release_handoffs(&mut self) {
        if self.handoffs.is_empty() {
            return;
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.handoffs)
            .into_iter()
            .partition(|(request, _)| {
                !self.requests.contains_key(request) || self.scheduler.kv().contains(*request)
            });
        self.handoffs = waiting;
        for (_, reservation) in done {
            self.release_reservation(reservation);
        }
    }

    /// Nothing could be scheduled although requests wait and none runs: the head of the queue
    /// can never fit. Fail it rather than spin.
    fn unblock_head(&mut self) {
        if self.scheduler.num_running() > 0 {
            return;
        }
        if let Some(seq) = self.scheduler.first_waiting() {
            self.fail(seq, "the request does not fit in the KV cache");
        }
    }

    fn mark_started(&mut self, seq: SeqId) {
        if let Some(request) = self.requests.get_mut(&seq) {
            if std::mem::take(&mut request.queued) {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Ends a request with `Finished` (its blocks are already released).
    fn end(&mut self, seq: SeqId, finish: SeqFinish) {
        if let Some(request) = self.requests.get(&seq) {
            let _ = request.events.send(EngineEvent::Finished {
                reason: finish.reason,
                prompt_tokens: finish.prompt_tokens,
                completion_tokens: finish.completion_tokens,
                cached_tokens: finish.cached_tokens,
            });
        }
        if finish.reason == FinishReason::Cancelled {
            tracing::debug!(seq, "request cancelled");
        }
        self.forget(seq);
    }

    /// Ends a request with `Failed` and releases everything it held.
    fn fail(&mut self, seq: SeqId, message: &str) {
        self.scheduler.abort(seq);
        if let Some(request) = self.requests.get(&seq) {
            tracing::warn!(request = %request.id, %message, "request failed");
            let _ = request.events.send(EngineEvent::Failed {
                message: message.to_string(),
            });
        }
        self.forget(seq);
    }

    fn forget(&mut self, seq: SeqId) {
        self.mark_started(seq);
        if let Some(request) = self.requests.remove(&seq) {
            let mut active = self.shared.active.lock();
            if active.get(&request.id) == Some(&seq) {
                active.remove(&request.id);
            }
        }
    }

    fn forward_kv_events(&mut self) {
        if !self.scheduler.kv().has_events() {
            return;
        }
        for event in self.scheduler.kv_mut().drain_events() {
            // No subscriber is fine: nobody routes by this worker's prefixes yet.
            let _ = self.shared.kv_events.send(event);
        }
    }

    fn publish_stats(&self) {
        let kv = self.scheduler.kv().stats();
        let snapshot = EngineStats {
            kv_blocks_total: kv.total_blocks,
            kv_blocks_used: kv.used_blocks,
            kv_blocks_cached: kv.cached_free_blocks,
            waiting: self.scheduler.num_waiting(),
            running: self.scheduler.num_running(),
            prefix_hit_rate: kv.prefix_hit_rate(),
            preemptions_total: self.scheduler.preemptions_total(),
            steps_total: self.steps_total,
            tokens_generated_total: self.tokens_generated_total,
        };
        snapshot.publish_gauges();
        *self.shared.stats.lock() = snapshot;
    }
}

impl Drop for Worker {
    /// However the thread ends, later submits must see a stopped engine, not a silent one.
    fn drop(&mut self) {
        self.shared.shut_down.store(true, Ordering::Release);
    }
}
