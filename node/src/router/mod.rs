//! The KV-aware router: a plain state machine that picks the decode worker and, when it pays,
//! a separate prefill worker for each request.
//!
//! Inputs: the workers of the replicated state (role, state, node status), their load (from the
//! leader's load fan-out), KV events (which worker holds which prefix), and this frontend's own
//! in-flight accounting. Output: a [`Decision`]. No sockets, no clocks.

mod prefix_index;

use std::collections::BTreeMap;

pub use prefix_index::PrefixIndex;
use stator_gpu::kv::{BlockHash, KvEvent};
use stator_raft::model::{WorkerId, WorkerRole};

#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Weight of uncached prompt blocks against active blocks in the prefill cost.
    pub overlap_weight: f64,
    /// 0 picks the lowest cost; above 0 samples with softmax(-cost / temperature).
    pub temperature: f64,
    /// Prompts whose uncached part is shorter than this many tokens prefill on the decode worker.
    pub disagg_min_tokens: usize,
    /// When every prefill worker has more queued requests than this, prefill locally.
    pub prefill_queue_limit: u32,
    pub block_size: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            overlap_weight: 1.0,
            temperature: 0.0,
            disagg_min_tokens: 512,
            prefill_queue_limit: 8,
            block_size: 16,
        }
    }
}

/// Live load of a worker, as last reported.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    pub active_blocks: u32,
    pub queue_depth: u32,
}

#[derive(Clone, Debug)]
struct WorkerView {
    role: WorkerRole,
    load: Load,
    /// Blocks this frontend has routed to the worker that its load report may not show yet.
    pending_blocks: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub decode: WorkerId,
    /// `None`: the decode worker prefills the prompt itself.
    pub prefill: Option<WorkerId>,
    /// Prompt tokens already cached on the worker that prefills.
    pub cached_tokens: usize,
    pub why: &'static str,
}

impl Decision {
    /// The workers this decision puts load on: the decode worker, then the prefill worker.
    pub fn targets(&self) -> impl Iterator<Item = WorkerId> {
        std::iter::once(self.decode).chain(self.prefill)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error("no active decode or aggregated worker is available")]
    NoDecodeWorker,
}

#[derive(Debug)]
pub struct Router {
    cfg: RouterConfig,
    workers: BTreeMap<WorkerId, WorkerView>,
    index: PrefixIndex,
}

impl Router {
    pub fn new(cfg: RouterConfig) -> Self {
        Self {
            cfg,
            workers: BTreeMap::new(),
            index: PrefixIndex::default(),
        }
    }

    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Replaces the set of workers a request may go to (active workers of peers that are up).
    /// The prefix index is left alone: it follows the KV feed, which clears a worker's entries
    /// when its stream breaks or it leaves, so a worker that drains and comes back keeps them.
    pub fn set_workers(&mut self, active: impl IntoIterator<Item = (WorkerId, WorkerRole)>) {
        let mut next = BTreeMap::new();
        for (id, role) in active {
            let view = match self.workers.remove(&id) {
                Some(mut v) => {
                    v.role = role;
                    v
                }
                None => WorkerView {
                    role,
                    load: Load::default(),
                    pending_blocks: 0,
                },
            };
            next.insert(id, view);
        }
        self.workers = next;
    }

    /// A fresh load report for `worker`, which already counts what this frontend sent it.
    pub fn set_load(&mut self, worker: WorkerId, load: Load) {
        if let Some(v) = self.workers.get_mut(&worker) {
            v.load = load;
            v.pending_blocks = 0;
        }
    }

    /// The worker's report went stale: only this frontend's own accounting is left to go by.
    pub fn forget_load(&mut self, worker: WorkerId) {
        if let Some(v) = self.workers.get_mut(&worker) {
            v.load = Load::default();
        }
    }

    pub fn apply_kv_event(&mut self, worker: WorkerId, event: &KvEvent) {
        self.index.apply(worker, event);
    }

    /// Forgets the blocks `worker` was known to hold (its feed broke, reset, or it left).
    pub fn clear_kv(&mut self, worker: WorkerId) {
        self.index.remove_worker(worker);
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    pub fn worker_ids(&self) -> impl Iterator<Item = WorkerId> + '_ {
        self.workers.keys().copied()
    }

    /// Releases this frontend's accounting for a finished request routed by `decision`.
    pub fn release(&mut self, decision: &Decision, prompt_tokens: usize) {
        let blocks = self.prompt_blocks(prompt_tokens);
        for target in decision.targets() {
            if let Some(v) = self.workers.get_mut(&target) {
                v.pending_blocks = v.pending_blocks.saturating_sub(blocks);
            }
        }
    }

    fn prompt_blocks(&self, prompt_tokens: usize) -> u32 {
        u32::try_from(prompt_tokens.div_ceil(self.cfg.block_size.max(1))).unwrap_or(u32::MAX)
    }

    pub fn indexed_blocks(&self) -> usize {
        self.index.indexed_blocks()
    }

    /// Picks workers for a prompt of `prompt_tokens` tokens whose full blocks hash to `hashes`.
    /// `uniform` in [0, 1) drives softmax sampling when a temperature is set.
    pub fn route(
        &mut self,
        hashes: &[BlockHash],
        prompt_tokens: usize,
        uniform: f64,
    ) -> Result<Decision, RouteError> {
        let bs = self.cfg.block_size.max(1);
        let prompt_blocks = self.prompt_blocks(prompt_tokens);
        let overlaps = self.index.overlaps(hashes);
        let uncached_blocks = |w: &WorkerId| -> f64 {
            let hit = overlaps.get(w).copied().unwrap_or(0) as f64;
            (prompt_blocks as f64 - hit).max(0.0)
        };
        let active = |v: &WorkerView| v.load.active_blocks as f64 + v.pending_blocks as f64;

        let serving: Vec<(&WorkerId, &WorkerView)> = self
            .workers
            .iter()
            .filter(|(_, v)| matches!(v.role, WorkerRole::Decode | WorkerRole::Aggregated))
            .collect();
        if serving.is_empty() {
            return Err(RouteError::NoDecodeWorker);
        }
        let prefillers: Vec<(&WorkerId, &WorkerView)> = self
            .workers
            .iter()
            .filter(|(_, v)| v.role == WorkerRole::Prefill)
            .collect();

        let w = self.cfg.overlap_weight;
        let temperature = self.cfg.temperature;
        let decision = if prefillers.is_empty() {
            // Aggregated cluster: prefix-aware and load-aware in one cost.
            let costs: Vec<(WorkerId, f64)> = serving
                .iter()
                .map(|(id, v)| (**id, w * uncached_blocks(id) + active(v)))
                .collect();
            let decode = pick(&costs, temperature, uniform);
            Decision {
                decode,
                prefill: None,
                cached_tokens: overlaps.get(&decode).copied().unwrap_or(0) * bs,
                why: "aggregated",
            }
        } else {
            // Decode by load alone: its prefill, if remote, arrives as KV.
            let costs: Vec<(WorkerId, f64)> = serving
                .iter()
                .map(|(_, v)| active(v) + v.load.queue_depth as f64 * prompt_blocks as f64)
                .zip(serving.iter().map(|(id, _)| **id))
                .map(|(c, id)| (id, c))
                .collect();
            let decode = pick(&costs, temperature, uniform);
            let local_cached = overlaps.get(&decode).copied().unwrap_or(0) * bs;
            let uncached_tokens = prompt_tokens.saturating_sub(local_cached);
            let prefill_busy = prefillers
                .iter()
                .all(|(_, v)| v.load.queue_depth > self.cfg.prefill_queue_limit);
            if uncached_tokens < self.cfg.disagg_min_tokens {
                Decision {
                    decode,
                    prefill: None,
                    cached_tokens: local_cached,
                    why: "short uncached prompt",
                }
            } else if prefill_busy {
                Decision {
                    decode,
                    prefill: None,
                    cached_tokens: local_cached,
                    why: "prefill workers saturated",
                }
            } else {
                let costs: Vec<(WorkerId, f64)> = prefillers
                    .iter()
                    .map(|(id, v)| (**id, w * uncached_blocks(id) + active(v)))
                    .collect();
                let prefill = pick(&costs, temperature, uniform);
                Decision {
                    decode,
                    prefill: Some(prefill),
                    cached_tokens: overlaps.get(&prefill).copied().unwrap_or(0) * bs,
                    why: "disaggregated",
                }
            }
        };
        // Account for the blocks this request will occupy until the next load report.
        for target in decision.targets() {
            if let Some(v) = self.workers.get_mut(&target) {
                v.pending_blocks = v.pending_blocks.saturating_add(prompt_blocks);
            }
        }
        Ok(decision)
    }
}

/// Lowest cost (ties → lowest id), or softmax sampling over -cost/temperature.
fn pick(costs: &[(WorkerId, f64)], temperature: f64, uniform: f64) -> WorkerId {
    if temperature <= 0.0 || costs.len() == 1 {
        return costs
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .map(|c| c.0)
            .unwrap_or(costs[0].0);
    }
    let min = costs.iter().map(|c| c.1).fold(f64::INFINITY, f64::min);
    let weights: Vec<f64> = costs
        .iter()
        .map(|c| (-(c.1 - min) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut target = uniform.clamp(0.0, 1.0) * total;
    for (c, wgt) in costs.iter().zip(&weights) {
        if target < *wgt {
            return c.0;
        }
        target -= wgt;
    }
    costs[costs.len() - 1].0
}

#[cfg(test)]
mod tests;
