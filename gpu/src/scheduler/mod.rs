//! Continuous batching: which tokens of which sequences run in the next forward pass.
//!
//! Each [`Scheduler::schedule`] call plans one iteration: running decodes first (one token
//! each), then chunks of partially prefilled sequences, then FCFS admission of waiting ones,
//! all under a per-step token budget. When KV blocks run out, the most recently admitted
//! sequence is preempted and later recomputed (its prompt and output are prefilled again,
//! reusing whatever the prefix cache still holds). A plain state machine: no threads, no I/O.

mod sequence;

use std::collections::{HashMap, VecDeque};

pub use sequence::{NewSequence, Sequence};

use crate::backend::SeqStep;
use crate::kv::{BlockManager, KvError, SeqId};
use crate::request::FinishReason;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    /// Tokens per forward pass, decodes and prefill chunks together.
    pub max_batch_tokens: usize,
    /// Longest sequence (prompt + output) the model and the KV cache can hold.
    pub max_model_len: usize,
    /// The model's end-of-sequence ids (honoured unless a request sets `ignore_eos`).
    pub eos_token_ids: Vec<u32>,
}

/// Work for one sequence in the planned forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduledStep {
    pub seq: SeqId,
    pub start_pos: usize,
    pub num_tokens: usize,
    /// The step reaches the sequence's end: a token is sampled from its logits.
    pub want_logits: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ScheduledBatch {
    pub steps: Vec<ScheduledStep>,
    /// Sequences preempted while planning this batch (they wait to be recomputed).
    pub preempted: Vec<SeqId>,
}

impl ScheduledBatch {
    pub fn num_tokens(&self) -> usize {
        self.steps.iter().map(|s| s.num_tokens).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// How a sequence ended, with the usage numbers a response reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqFinish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

/// A token appended to a sequence by [`Scheduler::on_step_output`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenOutcome {
    pub seq: SeqId,
    /// Output index of the token (counting tokens generated before a resume).
    pub index: usize,
    pub token: u32,
    /// Set when this token ended the sequence; its blocks are already released.
    pub finish: Option<SeqFinish>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("sequence {0} is already scheduled")]
    Duplicate(SeqId),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("{tokens} tokens leave no room to generate within {max}")]
    TooLong { tokens: usize, max: usize },
    #[error("max_tokens ({max_tokens}) is already reached by {generated} generated tokens")]
    NothingToGenerate { generated: usize, max_tokens: usize },
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    kv: BlockManager,
    seqs: HashMap<SeqId, Sequence>,
    waiting: VecDeque<SeqId>,
    /// Admission order, oldest first: the last one is preempted first.
    running: Vec<SeqId>,
    preemptions_total: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, kv: BlockManager) -> Self {
        Self {
            cfg,
            kv,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions_total: 0,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }
    pub fn kv(&self) -> &BlockManager {
        &self.kv
    }
    pub fn kv_mut(&mut self) -> &mut BlockManager {
        &mut self.kv
    }
    pub fn sequence(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    /// The sequence admission would try next.
    pub fn first_waiting(&self) -> Option<SeqId> {
        self.waiting.front().copied()
    }
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn has_work(&self) -> bool {
        !self.seqs.is_empty()
    }
    pub fn preemptions_total(&self) -> u64 {
        self.preemptions_total
    }

    /// Queues a sequence behind the waiting ones. Bad input changes nothing.
    pub fn add(&mut self, seq: NewSequence) -> Result<(), ScheduleError> {
        if self.seqs.contains_key(&seq.id) {
            return Err(ScheduleError::Duplicate(seq.id));
        }
        if seq.prompt.is_empty() {
            return Err(ScheduleError::EmptyPrompt);
        }
        let tokens = seq.prompt.len() + seq.generated.len();
        if tokens >= self.cfg.max_model_len {
            return Err(ScheduleError::TooLong {
                tokens,
                max: self.cfg.max_model_len,
            });
        }
        if seq.generated.len() >= seq.params.max_tokens {
            return Err(ScheduleError::NothingToGenerate {
                generated: seq.generated.len(),
                max_tokens: seq.params.max_tokens,
            });
        }
        let id = seq.id;
        self.seqs.insert(id, Sequence::new(seq));
        self.waiting.push_back(id);
        Ok(())
    }

    /// Removes a sequence wherever it is and frees its blocks.
    pub fn abort(&mut self, id: SeqId) -> Option<SeqFinish> {
        let seq = self.seqs.remove(&id)?;
        self.waiting.retain(|&w| w != id);
        self.running.retain(|&r| r != id);
        self.kv.free(id);
        Some(finish_of(&seq, FinishReason::Cancelled))
    }

    /// Plans the next forward pass.
    pub fn schedule(&mut self) -> ScheduledBatch {
        let mut batch = ScheduledBatch::default();
        let mut budget = self.cfg.max_batch_tokens;
        let (decodes, prefills): (Vec<SeqId>, Vec<SeqId>) = self
            .running
            .iter()
            .partition(|id| self.seqs[id].remaining() == 1);
        for id in decodes.into_iter().chain(prefills) {
            if budget == 0 {
                break;
            }
            if !self.running.contains(&id) {
                continue; // preempted while making room for an older sequence
            }
            self.schedule_running(id, &mut budget, &mut batch);
        }
        // Admitting right after a preemption would only preempt again next step.
        if batch.preempted.is_empty() {
            self.admit_waiting(&mut budget, &mut batch);
        }
        batch
    }

    fn schedule_running(&mut self, id: SeqId, budget: &mut usize, batch: &mut ScheduledBatch) {
        let seq = &self.seqs[&id];
        if seq.remaining() == 0 {
            return; // its sampling failed; the engine aborts it
        }
        let start_pos = seq.num_computed;
        let num_tokens = seq.remaining().min(*budget);
        let want_logits = num_tokens == seq.remaining();
        loop {
            match self.kv.grow(id, start_pos + num_tokens) {
                Ok(()) => {
                    batch.steps.push(ScheduledStep {
                        seq: id,
                        start_pos,
                        num_tokens,
                        want_logits,
                    });
                    *budget -= num_tokens;
                    return;
                }
                Err(KvError::OutOfBlocks { .. }) => {
                    let Some(&victim) = self.running.last() else {
                        return;
                    };
                    self.preempt(victim);
                    batch.preempted.push(victim);
                    if let Some(i) = batch.steps.iter().position(|s| s.seq == victim) {
                        *budget += batch.steps.remove(i).num_tokens;
                    }
                    if victim == id {
                        return;
                    }
                }
                Err(other) => {
                    tracing::error!(seq = id, error = %other, "running sequence lost its KV table");
                    return;
                }
            }
        }
    }

    fn admit_waiting(&mut self, budget: &mut usize, batch: &mut ScheduledBatch) {
        while *budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(&id) = self.waiting.front() else {
                return;
            };
            let Some(seq) = self.seqs.get_mut(&id) else {
                self.waiting.pop_front();
                continue;
            };
            let expected_hit = self.kv.cached_prefix_tokens(seq.tokens());
            let num_tokens = (seq.tokens().len() - expected_hit).min(*budget);
            // FCFS: if the head does not fit, nobody behind it jumps the queue.
            let Ok(cached) = self
                .kv
                .allocate(id, seq.tokens(), expected_hit + num_tokens)
            else {
                return;
            };
            debug_assert_eq!(cached, expected_hit);
            seq.num_computed = cached;
            seq.cached_prompt_tokens
                .get_or_insert(cached.min(seq.prompt().len()));
            self.waiting.pop_front();
            self.running.push(id);
            let want_logits = cached + num_tokens == seq.tokens().len();
            batch.steps.push(ScheduledStep {
                seq: id,
                start_pos: cached,
                num_tokens,
                want_logits,
            });
            *budget -= num_tokens;
        }
    }

    fn preempt(&mut self, id: SeqId) {
        tracing::debug!(seq = id, "preempting: out of KV blocks");
        self.kv.free(id);
        self.running.retain(|&r| r != id);
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.num_computed = 0;
        }
        self.waiting.push_front(id);
        self.preemptions_total += 1;
    }

    /// The backend's view of `batch`: token slices and block tables.
    pub fn seq_steps<'a>(&'a self, batch: &ScheduledBatch) -> Vec<SeqStep<'a>> {
        let block_size = self.kv.block_size();
        batch
            .steps
            .iter()
            .filter_map(|step| {
                let seq = self.seqs.get(&step.seq)?;
                let table = self.kv.block_table(step.seq)?;
                let end = step.start_pos + step.num_tokens;
                Some(SeqStep {
                    tokens: &seq.tokens()[step.start_pos..end],
                    start_pos: step.start_pos,
                    block_table: &table[..end.div_ceil(block_size).min(table.len())],
                    want_logits: step.want_logits,
                })
            })
            .collect()
    }

    /// Records a finished forward pass: every step's tokens are now in the KV cache, and each
    /// sampled `(seq, token)` is appended. A sequence that asked for logits but got no token
    /// (its sampling failed) must be aborted by the caller.
    pub fn on_step_output(
        &mut self,
        batch: &ScheduledBatch,
        sampled: &[(SeqId, u32)],
    ) -> Vec<TokenOutcome> {
        for step in &batch.steps {
            let Some(seq) = self.seqs.get_mut(&step.seq) else {
                continue;
            };
            if seq.num_computed != step.start_pos {
                tracing::error!(
                    seq = step.seq,
                    "step output does not match the scheduled position"
                );
                continue;
            }
            seq.num_computed = step.start_pos + step.num_tokens;
            if let Err(e) = self
                .kv
                .mark_computed(step.seq, &seq.tokens()[..seq.num_computed])
            {
                tracing::error!(seq = step.seq, error = %e, "cannot record computed KV");
            }
        }
        let mut outcomes = Vec::with_capacity(sampled.len());
        for &(id, token) in sampled {
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            if seq.remaining() != 0 {
                tracing::error!(
                    seq = id,
                    "token sampled for a sequence that did not reach its end"
                );
                continue;
            }
            seq.push_token(token);
            let index = seq.output().len() - 1;
            let finish = finish_reason(seq, token, &self.cfg).map(|reason| finish_of(seq, reason));
            if finish.is_some() {
                self.seqs.remove(&id);
                self.running.retain(|&r| r != id);
                self.kv.free(id);
            }
            outcomes.push(TokenOutcome {
                seq: id,
                index,
                token,
                finish,
            });
        }
        outcomes
    }
}

fn finish_reason(seq: &Sequence, token: u32, cfg: &SchedulerConfig) -> Option<FinishReason> {
    let params = seq.params();
    let is_eos = !params.ignore_eos && cfg.eos_token_ids.contains(&token);
    if is_eos || params.stop_token_ids.contains(&token) {
        Some(FinishReason::Stop)
    } else if seq.output().len() >= params.max_tokens || seq.tokens().len() >= cfg.max_model_len {
        Some(FinishReason::Length)
    } else {
        None
    }
}

fn finish_of(seq: &Sequence, reason: FinishReason) -> SeqFinish {
    SeqFinish {
        reason,
        prompt_tokens: seq.prompt().len(),
        completion_tokens: seq.output().len(),
        cached_tokens: seq.cached_prompt_tokens.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests;
