//! Raft gauges, refreshed when `/metrics` is scraped so they are always current.

use stator_raft::node::RaftNode;

pub fn export(raft: &RaftNode) {
    let m = raft.metrics().borrow().clone();
    metrics::gauge!("stator_raft_term").set(m.current_term as f64);
    metrics::gauge!("stator_raft_leader_id").set(m.current_leader.unwrap_or(0) as f64);
    metrics::gauge!("stator_raft_is_leader").set(if m.current_leader == Some(m.id) { 1.0 } else { 0.0 });
    metrics::gauge!("stator_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("stator_raft_applied_index").set(m.last_applied.map_or(0, |l| l.index) as f64);
    if let Some(c) = m.snapshot {
        metrics::gauge!("stator_raft_snapshot_index").set(c.index as f64);
    }
}
