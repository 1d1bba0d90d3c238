//! The engine's counters: a snapshot for callers and the `stator_worker_*` metrics.

use std::time::Duration;

/// A cheap snapshot of the engine's load, refreshed after every step and command.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    pub kv_blocks_total: usize,
    pub kv_blocks_used: usize,
    /// Unreferenced blocks still holding a reusable prefix.
    pub kv_blocks_cached: usize,
    pub waiting: usize,
    pub running: usize,
    /// Prompt tokens served from the prefix cache / prompt tokens looked up, since start.
    pub prefix_hit_rate: f64,
    pub preemptions_total: u64,
    pub steps_total: u64,
    pub tokens_generated_total: u64,
}

impl EngineStats {
    /// Publishes the gauges; counters are published as they grow (see the `record_*` fns).
    pub(crate) fn publish_gauges(&self) {
        metrics::gauge!("stator_worker_kv_blocks_used").set(self.kv_blocks_used as f64);
        metrics::gauge!("stator_worker_kv_blocks_total").set(self.kv_blocks_total as f64);
        metrics::gauge!("stator_worker_prefix_cache_hit_rate").set(self.prefix_hit_rate);
        metrics::gauge!("stator_worker_queue_depth").set(self.waiting as f64);
        metrics::gauge!("stator_worker_running_seqs").set(self.running as f64);
    }
}

pub(crate) fn record_preemptions(preemptions: u64) {
    if preemptions > 0 {
        metrics::counter!("stator_worker_preemptions_total").increment(preemptions);
    }
}

pub(crate) fn record_step(batch_tokens: usize, elapsed: Duration, generated: u64) {
    metrics::histogram!("stator_worker_batch_tokens").record(batch_tokens as f64);
    metrics::histogram!("stator_worker_step_seconds").record(elapsed.as_secs_f64());
    if generated > 0 {
        metrics::counter!("stator_worker_generated_tokens_total").increment(generated);
    }
}
