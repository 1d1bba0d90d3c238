//! CUDA graphs for decode steps. A decode-only batch is padded to a bucket of sequences and its
//! block tables to a bucket width ([`DecodeKey`]); every launch parameter of the step then
//! depends on the key alone, and what changes from step to step (tokens, positions, slots,
//! context lengths, tables) lives in a metadata buffer at a fixed device address per key. One
//! graph per key is captured lazily and replayed after copying the step's metadata into that
//! buffer.
//!
//! A key's first step runs eagerly (it loads lazily-loaded modules and warms cuBLAS's
//! heuristics outside any capture); its second is captured. A capture that fails marks the key,
//! and its steps keep running eagerly with the same padded layout.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use super::device::{driver_err, DeviceBuffer, Gpu};
use crate::backend::{BackendError, SeqStep};

/// Most graphs kept; steps of further shapes run eagerly, unpadded.
const MAX_GRAPHS: usize = 128;

/// How decode-only steps run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphMode {
    /// Every step launches its kernels one by one, unpadded.
    Off,
    /// Decode steps use the padded bucket layout but launch eagerly (what a failed capture
    /// falls back to; checks compare it with replays).
    PaddedEager,
    /// Decode steps replay a captured graph per bucket.
    On,
}

/// The shape a decode step is padded to: sequences and block-table width, both powers of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodeKey {
    pub bucket: usize,
    pub width: usize,
}

impl DecodeKey {
    /// The key of `batch` when graphs can serve it: every step is one token that wants logits.
    /// `max_num_seqs` caps the bucket (the scratch buffers are sized for it).
    pub fn of(batch: &[SeqStep<'_>], block_size: usize, max_num_seqs: usize) -> Option<Self> {
        if batch.is_empty() || !batch.iter().all(|s| s.tokens.len() == 1 && s.want_logits) {
            return None;
        }
        let blocks = batch
            .iter()
            .map(|s| (s.start_pos + 1).div_ceil(block_size))
            .max()?;
        Some(Self {
            bucket: batch.len().next_power_of_two().min(max_num_seqs),
            width: blocks.next_power_of_two(),
        })
    }
}

/// Counters of what graphs did, for benchmarks and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    pub captured: usize,
    pub replayed: usize,
    pub failed: usize,
    pub eager_padded: usize,
    /// Nodes (launches) in the graph captured last.
    pub last_graph_nodes: usize,
}

enum State {
    /// Never run: the next step of this key runs eagerly as a warm-up.
    New,
    Warm,
    Ready(CapturedGraph),
    Failed,
}

struct CapturedGraph(CudaGraph);

// SAFETY: a graph is launched only by the backend that owns it, which is used from one thread at
// a time (`Backend: Send`, not `Sync`); CUDA graph execs may be launched from any thread.
unsafe impl Send for CapturedGraph {}

struct Entry {
    meta: DeviceBuffer,
    state: State,
}

/// What the caller should do for a step after [`DecodeGraphs::prepare`].
pub enum Next {
    /// Launch the kernels eagerly (warm-up, failed capture, or graphs not wanted).
    Eager,
    /// Capture the kernels into a graph, then [`DecodeGraphs::finish_capture`].
    Capture,
    /// A graph is ready: [`DecodeGraphs::replay`].
    Replay,
}

#[derive(Default)]
pub struct DecodeGraphs {
    entries: HashMap<DecodeKey, Entry>,
    pub stats: GraphStats,
}

impl DecodeGraphs {
    /// Whether `key` has (or may get) a metadata buffer.
    pub fn accepts(&self, key: DecodeKey) -> bool {
        self.entries.contains_key(&key) || self.entries.len() < MAX_GRAPHS
    }

    /// Copies `meta` into the key's fixed buffer (allocated on first use) and says what to do.
    /// Returns the buffer's device address.
    pub fn prepare(
        &mut self,
        gpu: &Arc<Gpu>,
        key: DecodeKey,
        meta: &[i32],
        mode: GraphMode,
    ) -> Result<(u64, Next), BackendError> {
        let bytes = std::mem::size_of_val(meta);
        let entry = match self.entries.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Entry {
                meta: gpu.alloc(bytes, "decode graph metadata")?,
                state: State::New,
            }),
        };
        // The layout of a key's metadata is fixed by the key; a size change would be a bug
        // in the plan, and replaying would read a stale layout.
        if entry.meta.bytes() != bytes {
            return Err(BackendError::Device(format!(
                "decode metadata for {key:?} is {bytes} bytes, its buffer {}",
                entry.meta.bytes()
            )));
        }
        entry.meta.write(meta)?;
        let next = match (&entry.state, mode) {
            (_, GraphMode::Off | GraphMode::PaddedEager) | (State::Failed, _) => Next::Eager,
            (State::New, GraphMode::On) => {
                entry.state = State::Warm;
                Next::Eager
            }
            (State::Warm, GraphMode::On) => Next::Capture,
            (State::Ready(_), GraphMode::On) => Next::Replay,
        };
        if matches!(next, Next::Eager) {
            self.stats.eager_padded += 1;
        }
        Ok((entry.meta.ptr(), next))
    }

    /// Begins capturing the backend's stream.
    pub fn begin_capture(gpu: &Gpu) -> Result<(), BackendError> {
        gpu.cuda_stream()
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(driver_err("cuStreamBeginCapture"))
    }

    /// Ends the capture begun by [`Self::begin_capture`] and keeps the graph for `key`; with
    /// `encoded` an error (a launch failed while capturing) or a failed instantiation, marks
    /// the key so its steps run eagerly from now on. Returns whether a graph is ready.
    pub fn finish_capture(
        &mut self,
        gpu: &Gpu,
        key: DecodeKey,
        encoded: Result<(), BackendError>,
    ) -> bool {
        // Always end the capture, even after an error: the stream stays unusable until then.
        let ended = gpu.cuda_stream().end_capture(CUgraphInstantiate_flags(0));
        let Some(entry) = self.entries.get_mut(&key) else {
            return false;
        };
        let outcome = match (encoded, ended) {
            (Ok(()), Ok(Some(graph))) => Ok(graph),
            (Err(e), _) => Err(e.to_string()),
            (Ok(()), Ok(None)) => Err("the capture recorded nothing".into()),
            (Ok(()), Err(e)) => Err(format!("{e:?}")),
        };
        match outcome {
            Ok(graph) => {
                let mut nodes = 0usize;
                // SAFETY: a live graph; a null node array asks for the count only.
                let counted = unsafe {
                    cudarc::driver::sys::cuGraphGetNodes(
                        graph.cu_graph(),
                        std::ptr::null_mut(),
                        &mut nodes,
                    )
                };
                if counted.result().is_ok() {
                    self.stats.last_graph_nodes = nodes;
                }
                entry.state = State::Ready(CapturedGraph(graph));
                self.stats.captured += 1;
                tracing::debug!(
                    bucket = key.bucket,
                    width = key.width,
                    "captured a decode graph"
                );
                true
            }
            Err(error) => {
                entry.state = State::Failed;
                self.stats.failed += 1;
                metrics::counter!("stator_cuda_graph_capture_failures_total").increment(1);
                tracing::warn!(bucket = key.bucket, width = key.width, %error, "decode graph capture failed; this shape runs eagerly");
                false
            }
        }
    }

    /// Replays the graph of `key` on the backend's stream.
    pub fn replay(&mut self, key: DecodeKey) -> Result<(), BackendError> {
        match self.entries.get(&key).map(|e| &e.state) {
            Some(State::Ready(graph)) => {
                graph.0.launch().map_err(driver_err("cuGraphLaunch"))?;
                self.stats.replayed += 1;
                Ok(())
            }
            _ => Err(BackendError::Device(format!(
                "no captured decode graph for {key:?}"
            ))),
        }
    }

    /// Forgets every graph (their launch parameters no longer match the backend's choices).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step<'a>(tokens: &'a [u32], start_pos: usize, table: &'a [u32]) -> SeqStep<'a> {
        SeqStep {
            tokens,
            start_pos,
            block_table: table,
            want_logits: true,
        }
    }

    #[test]
    fn decode_batches_round_up_to_power_of_two_buckets() {
        let table: Vec<u32> = (0..8).collect();
        let one = [3u32];
        // 3 sequences, the longest at position 40 (41 tokens: 3 blocks of 16).
        let batch = [
            step(&one, 40, &table),
            step(&one, 3, &table),
            step(&one, 17, &table),
        ];
        assert_eq!(
            DecodeKey::of(&batch, 16, 256),
            Some(DecodeKey {
                bucket: 4,
                width: 4
            })
        );
        // The table widens when the context crosses into a fifth block.
        let grown = [step(&one, 64, &table)];
        assert_eq!(DecodeKey::of(&grown, 16, 256).map(|k| k.width), Some(8));
        // The bucket never exceeds what the scratch buffers hold.
        let many: Vec<SeqStep> = (0..5).map(|_| step(&one, 1, &table)).collect();
        assert_eq!(DecodeKey::of(&many, 16, 6).map(|k| k.bucket), Some(6));
    }

    #[test]
    fn prefill_or_logit_free_steps_are_not_graphed() {
        let table: Vec<u32> = (0..8).collect();
        let prompt = [1u32, 2, 3];
        let one = [3u32];
        assert_eq!(DecodeKey::of(&[step(&prompt, 0, &table)], 16, 8), None);
        let mut quiet = step(&one, 5, &table);
        quiet.want_logits = false;
        assert_eq!(DecodeKey::of(&[quiet], 16, 8), None);
        assert_eq!(DecodeKey::of(&[], 16, 8), None);
    }
}
