//! The leader's failure detector: a plain state machine fed with heartbeat arrivals and ticks.
//!
//! Only the Raft leader runs one. It never reads a clock itself: callers pass `now`, so tests
//! drive time explicitly. A fresh detector (a new leader) starts every peer's clock at creation,
//! which is what lets a new leader avoid declaring everyone dead at its election.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use stator_raft::model::NodeStatus;

/// A status change the leader should commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub node: u64,
    pub to: NodeStatus,
    /// How long the node had been silent when the transition was decided (for `Down`).
    pub silent_for: Duration,
}

#[derive(Debug)]
pub struct FailureDetector {
    down_after: Duration,
    started: Instant,
    last_heard: BTreeMap<u64, Instant>,
    /// Transitions proposed but not yet seen committed, so a tick does not propose them twice
    /// while the write is in flight.
    pending: BTreeMap<u64, NodeStatus>,
}

impl FailureDetector {
    pub fn new(down_after: Duration, now: Instant) -> Self {
        Self {
            down_after,
            started: now,
            last_heard: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    pub fn heartbeat(&mut self, node: u64, now: Instant) {
        let slot = self.last_heard.entry(node).or_insert(now);
        if now > *slot {
            *slot = now;
        }
    }

    /// Time since the node was last heard from (or since this detector started).
    pub fn silence(&self, node: u64, now: Instant) -> Duration {
        let since = self.last_heard.get(&node).copied().unwrap_or(self.started);
        now.saturating_duration_since(since)
    }

    /// Compares the replicated statuses of the members (excluding the leader itself) with what
    /// the detector has heard, and returns the transitions to commit.
    pub fn tick(&mut self, members: &BTreeMap<u64, NodeStatus>, now: Instant) -> Vec<Transition> {
        // Forget proposals the log has caught up with, and nodes that are gone.
        self.pending
            .retain(|node, to| members.get(node).is_some_and(|s| s != to));
        self.last_heard.retain(|node, _| members.contains_key(node));

        let mut out = Vec::new();
        for (&node, &status) in members {
            if self.pending.contains_key(&node) {
                continue;
            }
            let silent_for = self.silence(node, now);
            let alive = silent_for < self.down_after;
            let to = match (status, alive) {
                (NodeStatus::Up, false) => NodeStatus::Down,
                (NodeStatus::Down, true) => NodeStatus::Up,
                _ => continue,
            };
            self.pending.insert(node, to);
            out.push(Transition {
                node,
                to,
                silent_for,
            });
        }
        out
    }

    /// A proposed transition failed to commit: allow the next tick to propose it again.
    pub fn proposal_failed(&mut self, node: u64) {
        self.pending.remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(u64, NodeStatus)]) -> BTreeMap<u64, NodeStatus> {
        list.iter().copied().collect()
    }

    #[test]
    fn silent_peer_goes_down_after_the_threshold_and_not_before() {
        let t0 = Instant::now();
        let mut fd = FailureDetector::new(Duration::from_millis(300), t0);
        let m = members(&[(2, NodeStatus::Up), (3, NodeStatus::Up)]);
        fd.heartbeat(2, t0 + Duration::from_millis(100));
        fd.heartbeat(3, t0 + Duration::from_millis(100));
        assert!(fd.tick(&m, t0 + Duration::from_millis(350)).is_empty());
        fd.heartbeat(2, t0 + Duration::from_millis(380));
        let out = fd.tick(&m, t0 + Duration::from_millis(401));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].node, 3);
        assert_eq!(out[0].to, NodeStatus::Down);
        assert!(out[0].silent_for >= Duration::from_millis(300));
    }

    #[test]
    fn new_detector_gives_everyone_a_full_grace_period() {
        let t0 = Instant::now();
        let mut fd = FailureDetector::new(Duration::from_millis(300), t0);
        let m = members(&[(2, NodeStatus::Up)]);
        assert!(fd.tick(&m, t0 + Duration::from_millis(299)).is_empty());
        assert_eq!(fd.tick(&m, t0 + Duration::from_millis(300)).len(), 1);
    }

    #[test]
    fn a_proposal_is_not_repeated_until_committed_or_failed() {
        let t0 = Instant::now();
        let mut fd = FailureDetector::new(Duration::from_millis(300), t0);
        let up = members(&[(2, NodeStatus::Up)]);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(fd.tick(&up, later).len(), 1);
        assert!(fd.tick(&up, later).is_empty(), "in flight");
        fd.proposal_failed(2);
        assert_eq!(fd.tick(&up, later).len(), 1, "retried after failure");
        // Committed: the replicated status is now Down, nothing more to do while silent.
        let down = members(&[(2, NodeStatus::Down)]);
        assert!(fd.tick(&down, later).is_empty());
    }

    #[test]
    fn a_down_peer_that_speaks_again_comes_back_up() {
        let t0 = Instant::now();
        let mut fd = FailureDetector::new(Duration::from_millis(300), t0);
        let down = members(&[(2, NodeStatus::Down)]);
        assert!(fd.tick(&down, t0 + Duration::from_secs(2)).is_empty());
        fd.heartbeat(2, t0 + Duration::from_secs(2));
        let out = fd.tick(&down, t0 + Duration::from_millis(2010));
        assert_eq!(out[0].to, NodeStatus::Up);
    }

    #[test]
    fn left_nodes_are_never_touched() {
        let t0 = Instant::now();
        let mut fd = FailureDetector::new(Duration::from_millis(300), t0);
        let m = members(&[(2, NodeStatus::Left)]);
        assert!(fd.tick(&m, t0 + Duration::from_secs(5)).is_empty());
        fd.heartbeat(2, t0 + Duration::from_secs(5));
        assert!(fd.tick(&m, t0 + Duration::from_secs(5)).is_empty());
    }
}
