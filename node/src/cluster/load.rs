//! Live load for routing. Every peer's heartbeat carries its engine's load; the leader keeps
//! the latest report per node ([`LoadCollector`], one per term) and fans the table out to every
//! peer about every 100 ms; each peer keeps the newest table it heard ([`LoadTable`]) in a
//! watch channel of its [`LoadBoard`]. Sans-IO: time comes in as `now`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use stator_raft::model::WorkerId;
use tokio::sync::watch;

use super::rpc::LoadReport;

/// How often the leader sends the table.
pub const FANOUT_INTERVAL: Duration = Duration::from_millis(100);
/// A report older than this says nothing about the node's load now.
pub const STALE_AFTER: Duration = Duration::from_secs(1);

/// One node's latest report, as the leader holds it when it sends the table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadEntry {
    pub node: u64,
    /// The sender's heartbeat sequence number: a new number is a new report.
    pub report_seq: u64,
    pub report: LoadReport,
    /// How long before sending the leader received it.
    pub age_ms: u32,
}

/// The leader's fan-out message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadTableMsg {
    pub leader: u64,
    pub term: u64,
    /// Increases with every table of this term, so reordered datagrams are ignored.
    pub seq: u64,
    pub entries: Vec<LoadEntry>,
}

#[derive(Clone, Debug)]
struct Received {
    seq: u64,
    report: LoadReport,
    at: Instant,
}

/// The leader's latest report per node, for one term: a new leader starts from nothing and
/// learns everyone's load from the next heartbeats.
#[derive(Debug)]
pub struct LoadCollector {
    term: u64,
    next_seq: u64,
    latest: BTreeMap<u64, Received>,
}

impl LoadCollector {
    pub fn new(term: u64) -> Self {
        Self {
            term,
            next_seq: 0,
            latest: BTreeMap::new(),
        }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// Keeps a heartbeat's report unless a newer one from the same node is already here. A
    /// lower sequence number after the old one went stale is a restarted peer, and is kept.
    pub fn record(&mut self, node: u64, seq: u64, report: LoadReport, now: Instant) {
        if let Some(prev) = self.latest.get(&node) {
            let restarted = now.saturating_duration_since(prev.at) >= STALE_AFTER;
            if seq <= prev.seq && !restarted {
                return;
            }
        }
        self.latest.insert(
            node,
            Received {
                seq,
                report,
                at: now,
            },
        );
    }

    /// The table to send now: every report younger than [`STALE_AFTER`].
    pub fn table(&mut self, leader: u64, now: Instant) -> LoadTableMsg {
        self.latest
            .retain(|_, r| now.saturating_duration_since(r.at) < STALE_AFTER);
        self.next_seq += 1;
        LoadTableMsg {
            leader,
            term: self.term,
            seq: self.next_seq,
            entries: self
                .latest
                .iter()
                .map(|(node, r)| LoadEntry {
                    node: *node,
                    report_seq: r.seq,
                    report: r.report.clone(),
                    age_ms: now.saturating_duration_since(r.at).as_millis() as u32,
                })
                .collect(),
        }
    }
}

/// A node's report as a peer knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct KnownLoad {
    pub report_seq: u64,
    pub report: LoadReport,
    /// When the leader received it, on this peer's clock.
    pub measured_at: Instant,
}

/// The newest load table a peer has heard.
#[derive(Clone, Debug, Default)]
pub struct LoadTable {
    leader: u64,
    term: u64,
    seq: u64,
    received_at: Option<Instant>,
    entries: BTreeMap<u64, KnownLoad>,
}

impl LoadTable {
    /// Takes `msg` if it is newer than the table held: a later term (a new leader), or a later
    /// table of the same term. Returns whether it was taken.
    pub fn accept(&mut self, msg: LoadTableMsg, now: Instant) -> bool {
        if (msg.term, msg.seq) <= (self.term, self.seq) && self.received_at.is_some() {
            return false;
        }
        self.leader = msg.leader;
        self.term = msg.term;
        self.seq = msg.seq;
        self.received_at = Some(now);
        self.entries = msg
            .entries
            .into_iter()
            .map(|e| {
                let age = Duration::from_millis(u64::from(e.age_ms));
                let known = KnownLoad {
                    report_seq: e.report_seq,
                    report: e.report,
                    measured_at: now.checked_sub(age).unwrap_or(now),
                };
                (e.node, known)
            })
            .collect();
        true
    }

    /// `node`'s load if it was measured less than [`STALE_AFTER`] before `now`; older is unknown.
    pub fn fresh(&self, node: u64, now: Instant) -> Option<&KnownLoad> {
        self.entries
            .get(&node)
            .filter(|k| now.saturating_duration_since(k.measured_at) < STALE_AFTER)
    }

    /// KV blocks in use per worker (a node's report describes its slot 0), fresh reports only.
    pub fn active_blocks(&self, now: Instant) -> BTreeMap<WorkerId, u32> {
        self.entries
            .keys()
            .filter_map(|node| {
                let known = self.fresh(*node, now)?;
                Some((
                    WorkerId {
                        node: *node,
                        slot: 0,
                    },
                    known.report.kv_blocks_used,
                ))
            })
            .collect()
    }

    /// Time since the last table arrived; `None` before the first.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.received_at.map(|at| now.saturating_duration_since(at))
    }

    pub fn term(&self) -> u64 {
        self.term
    }
}

/// What this peer measures about its own load (its engine's stats).
pub type LoadSource = Box<dyn Fn() -> LoadReport + Send + Sync>;

/// A peer's load plumbing: the local source its heartbeats read, and the latest table.
pub struct LoadBoard {
    source: RwLock<Option<LoadSource>>,
    table: watch::Sender<LoadTable>,
}

impl Default for LoadBoard {
    fn default() -> Self {
        Self {
            source: RwLock::new(None),
            table: watch::channel(LoadTable::default()).0,
        }
    }
}

impl std::fmt::Debug for LoadBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadBoard")
            .field("has_source", &self.source.read().is_some())
            .field("table", &*self.table.borrow())
            .finish()
    }
}

impl LoadBoard {
    /// Called once the local engine runs; until then this peer reports no load.
    pub fn set_source(&self, source: LoadSource) {
        *self.source.write() = Some(source);
    }

    pub fn local_report(&self) -> LoadReport {
        self.source.read().as_ref().map(|f| f()).unwrap_or_default()
    }

    /// The latest table; entries older than [`STALE_AFTER`] count as unknown (see
    /// [`LoadTable::fresh`]).
    pub fn table(&self) -> watch::Receiver<LoadTable> {
        self.table.subscribe()
    }

    /// Offers a received (or, on the leader, just built) table; returns whether it was newer.
    pub fn offer(&self, msg: LoadTableMsg, now: Instant) -> bool {
        self.table.send_if_modified(|t| t.accept(msg, now))
    }

    pub fn table_age(&self, now: Instant) -> Option<Duration> {
        self.table.borrow().age(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(queue_depth: u32) -> LoadReport {
        LoadReport {
            queue_depth,
            running_seqs: 1,
            kv_blocks_used: 10,
            kv_blocks_total: 100,
        }
    }

    #[test]
    fn reports_older_than_a_second_are_unknown_on_the_peer() {
        let t0 = Instant::now();
        let mut leader = LoadCollector::new(3);
        leader.record(2, 1, report(4), t0);
        leader.record(5, 1, report(7), t0 + Duration::from_millis(900));
        let msg = leader.table(1, t0 + Duration::from_millis(950));
        assert_eq!(msg.entries.len(), 2);
        assert_eq!(msg.entries[0].age_ms, 950);

        let mut table = LoadTable::default();
        let arrived = t0 + Duration::from_millis(960);
        assert!(table.accept(msg, arrived));
        assert_eq!(
            table.fresh(2, arrived).map(|k| k.report.queue_depth),
            Some(4)
        );
        // 2's report was measured at t0: unknown from t0 + 1 s on, while 5's is still fresh.
        let later = t0 + Duration::from_millis(1010);
        assert!(table.fresh(2, later).is_none());
        assert_eq!(table.fresh(5, later).map(|k| k.report.queue_depth), Some(7));
        assert!(table.fresh(9, later).is_none(), "a node never heard of");
        let active = table.active_blocks(later);
        assert_eq!(active.len(), 1, "only 5's report is fresh: {active:?}");
        assert_eq!(active[&WorkerId { node: 5, slot: 0 }], 10);
    }

    #[test]
    fn the_leader_drops_stale_reports_and_reordered_heartbeats() {
        let t0 = Instant::now();
        let mut leader = LoadCollector::new(1);
        leader.record(2, 5, report(5), t0);
        leader.record(2, 4, report(4), t0 + Duration::from_millis(10));
        assert_eq!(leader.table(1, t0).entries[0].report.queue_depth, 5);
        // Silent for over a second: gone from the table.
        assert!(leader
            .table(1, t0 + Duration::from_millis(1001))
            .entries
            .is_empty());
        // The peer restarted: its sequence starts over and is taken.
        leader.record(2, 1, report(1), t0 + Duration::from_millis(1200));
        let msg = leader.table(1, t0 + Duration::from_millis(1200));
        assert_eq!(
            (msg.entries[0].report_seq, msg.entries[0].report.queue_depth),
            (1, 1)
        );
    }

    #[test]
    fn a_new_leader_replaces_the_table_and_a_deposed_one_is_ignored() {
        let t0 = Instant::now();
        let mut old = LoadCollector::new(4);
        old.record(2, 1, report(2), t0);
        let mut table = LoadTable::default();
        assert!(table.accept(old.table(1, t0), t0));
        let reordered = old.table(1, t0);
        let newest = old.table(1, t0);
        assert!(table.accept(newest, t0));
        assert!(!table.accept(reordered, t0), "an older table of the term");

        // Leader 1 died; 3 won term 5 and has heard only from itself so far.
        let mut new = LoadCollector::new(5);
        new.record(3, 1, report(0), t0);
        assert!(table.accept(new.table(3, t0), t0));
        assert_eq!(table.term(), 5);
        assert!(
            table.fresh(2, t0).is_none(),
            "the new leader's table replaces the old"
        );
        // The deposed leader, cut off, keeps sending: its term is older.
        assert!(!table.accept(old.table(1, t0), t0));
        assert!(table.fresh(3, t0).is_some());
    }

    #[test]
    fn the_board_reports_its_source_and_publishes_only_newer_tables() {
        let board = LoadBoard::default();
        assert_eq!(board.local_report().queue_depth, 0, "no engine yet");
        board.set_source(Box::new(|| report(9)));
        assert_eq!(board.local_report().queue_depth, 9);
        let mut rx = board.table();
        let now = Instant::now();
        let mut c = LoadCollector::new(1);
        let first = c.table(1, now);
        assert!(board.offer(first.clone(), now));
        assert!(rx.has_changed().unwrap_or(false));
        rx.borrow_and_update();
        assert!(!board.offer(first, now));
        assert!(!rx.has_changed().unwrap_or(true));
    }
}
