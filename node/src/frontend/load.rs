//! From the leader's load table to the router: each worker's report is applied once (a new
//! report already counts the requests this frontend sent before it, so it replaces the router's
//! in-flight accounting), and a report that went stale is forgotten once.

use std::collections::BTreeMap;
use std::time::Instant;

use stator_raft::model::WorkerId;

use crate::cluster::load::LoadTable;
use crate::cluster::rpc::LoadReport;
use crate::router::{Load, Router};

/// The report sequence numbers the router has taken, per node.
#[derive(Debug, Default)]
pub struct LoadApplier {
    applied: BTreeMap<u64, u64>,
}

impl LoadApplier {
    /// What changed for `workers` since the last call: `Some(load)` for a new report, `None`
    /// for a report that went stale (or vanished from the table). Reports are per node and
    /// describe its worker in slot 0.
    pub fn changes(
        &mut self,
        table: &LoadTable,
        workers: impl IntoIterator<Item = WorkerId>,
        now: Instant,
    ) -> Vec<(WorkerId, Option<Load>)> {
        let mut out = Vec::new();
        for worker in workers.into_iter().filter(|w| w.slot == 0) {
            match table.fresh(worker.node, now) {
                Some(known) => {
                    if self.applied.insert(worker.node, known.report_seq) != Some(known.report_seq)
                    {
                        out.push((worker, Some(load_of(&known.report))));
                    }
                }
                None => {
                    if self.applied.remove(&worker.node).is_some() {
                        out.push((worker, None));
                    }
                }
            }
        }
        out
    }

    /// Applies [`Self::changes`] to `router`.
    pub fn apply(&mut self, router: &mut Router, table: &LoadTable, now: Instant) {
        let workers: Vec<WorkerId> = router.worker_ids().collect();
        for (worker, load) in self.changes(table, workers, now) {
            match load {
                Some(load) => router.set_load(worker, load),
                None => router.forget_load(worker),
            }
        }
    }
}

fn load_of(report: &LoadReport) -> Load {
    Load {
        active_blocks: report.kv_blocks_used,
        queue_depth: report.queue_depth,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::load::{LoadEntry, LoadTableMsg};
    use std::time::Duration;

    fn w(node: u64, slot: u32) -> WorkerId {
        WorkerId { node, slot }
    }

    fn table(now: Instant, entries: &[(u64, u64, u32)]) -> LoadTable {
        let mut t = LoadTable::default();
        t.accept(
            LoadTableMsg {
                leader: 1,
                term: 1,
                seq: 1,
                entries: entries
                    .iter()
                    .map(|(node, report_seq, used)| LoadEntry {
                        node: *node,
                        report_seq: *report_seq,
                        report: LoadReport {
                            kv_blocks_used: *used,
                            ..Default::default()
                        },
                        age_ms: 0,
                    })
                    .collect(),
            },
            now,
        );
        t
    }

    #[test]
    fn each_report_is_applied_once_and_a_stale_one_is_forgotten_once() {
        let t0 = Instant::now();
        let mut applier = LoadApplier::default();
        let workers = [w(1, 0), w(2, 0), w(2, 1)];
        let t = table(t0, &[(1, 7, 30), (2, 3, 5)]);
        let first = applier.changes(&t, workers, t0);
        assert_eq!(first.len(), 2, "slot 1 has no report of its own");
        assert_eq!(first[0].1.map(|l| l.active_blocks), Some(30));
        assert!(applier.changes(&t, workers, t0).is_empty(), "nothing new");
        let stale = t0 + Duration::from_secs(2);
        let forgotten = applier.changes(&t, workers, stale);
        assert_eq!(forgotten, vec![(w(1, 0), None), (w(2, 0), None)]);
        assert!(applier.changes(&t, workers, stale).is_empty());
        let t = table(stale, &[(1, 8, 31)]);
        assert_eq!(
            applier.changes(&t, workers, stale),
            vec![(
                w(1, 0),
                Some(Load {
                    active_blocks: 31,
                    queue_depth: 0
                })
            )]
        );
    }
}
