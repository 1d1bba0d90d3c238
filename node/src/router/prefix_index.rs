//! Which worker holds which cached prefix, fed by the workers' KV events.

use std::collections::{HashMap, HashSet};

use stator_gpu::kv::{BlockHash, KvEvent};
use stator_raft::model::WorkerId;

/// Index of chained block hashes to the workers holding them. Because hashes are chained, a
/// worker holding block `i` of a prompt's hash list holds the whole prefix up to `i` (unless it
/// evicted an earlier block, which the overlap walk handles by stopping at the first gap).
#[derive(Default, Debug)]
pub struct PrefixIndex {
    holders: HashMap<BlockHash, Vec<WorkerId>>,
    by_worker: HashMap<WorkerId, HashSet<BlockHash>>,
}

impl PrefixIndex {
    pub fn apply(&mut self, worker: WorkerId, event: &KvEvent) {
        match event {
            KvEvent::Stored { hashes } => {
                let owned = self.by_worker.entry(worker).or_default();
                for h in hashes {
                    if owned.insert(*h) {
                        self.holders.entry(*h).or_default().push(worker);
                    }
                }
            }
            KvEvent::Removed { hashes } => {
                let Some(owned) = self.by_worker.get_mut(&worker) else {
                    return;
                };
                for h in hashes {
                    if owned.remove(h) {
                        Self::unlink(&mut self.holders, *h, worker);
                    }
                }
            }
        }
    }

    /// Forgets everything a worker held (it left, restarted or changed role).
    pub fn remove_worker(&mut self, worker: WorkerId) {
        if let Some(owned) = self.by_worker.remove(&worker) {
            for h in owned {
                Self::unlink(&mut self.holders, h, worker);
            }
        }
    }

    fn unlink(holders: &mut HashMap<BlockHash, Vec<WorkerId>>, h: BlockHash, worker: WorkerId) {
        if let Some(list) = holders.get_mut(&h) {
            list.retain(|w| *w != worker);
            if list.is_empty() {
                holders.remove(&h);
            }
        }
    }

    /// Number of leading blocks of `hashes` each worker holds (workers with none are absent).
    pub fn overlaps(&self, hashes: &[BlockHash]) -> HashMap<WorkerId, usize> {
        let mut out = HashMap::new();
        let Some(first) = hashes.first().and_then(|h| self.holders.get(h)) else {
            return out;
        };
        let mut alive: Vec<WorkerId> = first.clone();
        for w in &alive {
            out.insert(*w, 1);
        }
        for h in &hashes[1..] {
            let Some(holders) = self.holders.get(h) else {
                break;
            };
            alive.retain(|w| holders.contains(w));
            if alive.is_empty() {
                break;
            }
            for w in &alive {
                *out.entry(*w).or_insert(0) += 1;
            }
        }
        out
    }

    pub fn indexed_blocks(&self) -> usize {
        self.holders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(node: u64) -> WorkerId {
        WorkerId { node, slot: 0 }
    }
    fn hs(ids: &[u64]) -> Vec<BlockHash> {
        ids.iter().map(|i| BlockHash(*i)).collect()
    }

    #[test]
    fn overlap_counts_leading_blocks_per_worker() {
        let mut idx = PrefixIndex::default();
        idx.apply(
            w(1),
            &KvEvent::Stored {
                hashes: hs(&[10, 11, 12]),
            },
        );
        idx.apply(w(2), &KvEvent::Stored { hashes: hs(&[10]) });
        let o = idx.overlaps(&hs(&[10, 11, 12, 13]));
        assert_eq!(o[&w(1)], 3);
        assert_eq!(o[&w(2)], 1);
        assert!(
            idx.overlaps(&hs(&[99, 10])).is_empty(),
            "prefix must start at block 0"
        );
    }

    #[test]
    fn eviction_in_the_middle_stops_the_prefix() {
        let mut idx = PrefixIndex::default();
        idx.apply(
            w(1),
            &KvEvent::Stored {
                hashes: hs(&[10, 11, 12]),
            },
        );
        idx.apply(w(1), &KvEvent::Removed { hashes: hs(&[11]) });
        assert_eq!(idx.overlaps(&hs(&[10, 11, 12]))[&w(1)], 1);
    }

    #[test]
    fn removing_a_worker_forgets_all_its_blocks() {
        let mut idx = PrefixIndex::default();
        idx.apply(
            w(1),
            &KvEvent::Stored {
                hashes: hs(&[10, 11]),
            },
        );
        idx.apply(w(2), &KvEvent::Stored { hashes: hs(&[10]) });
        idx.remove_worker(w(1));
        let o = idx.overlaps(&hs(&[10, 11]));
        assert!(!o.contains_key(&w(1)));
        assert_eq!(o[&w(2)], 1);
        assert_eq!(idx.indexed_blocks(), 1);
    }

    #[test]
    fn duplicate_stores_do_not_double_count() {
        let mut idx = PrefixIndex::default();
        idx.apply(w(1), &KvEvent::Stored { hashes: hs(&[10]) });
        idx.apply(w(1), &KvEvent::Stored { hashes: hs(&[10]) });
        idx.apply(w(1), &KvEvent::Removed { hashes: hs(&[10]) });
        assert_eq!(idx.indexed_blocks(), 0);
    }
}
