//! Tunables of a Raft node and their translation to openraft's config.

use std::time::Duration;

use openraft::SnapshotPolicy;

use crate::error::RaftError;

#[derive(Clone, Debug)]
pub struct RaftConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and let the log be purged) after this many entries.
    pub snapshot_every_entries: u64,
    /// Entries kept below the snapshot so that slightly lagging followers need no snapshot.
    pub max_in_snapshot_log_to_keep: u64,
    /// Log entries this node's writer commits at a time; while all are in flight, new writes
    /// queue and go out together in the next entry (group commit without a timer).
    pub max_batches_in_flight: usize,
    /// Deadline of a write (and of forwarding it), from submission to applied.
    pub write_timeout: Duration,
    /// Deadline of a membership change (adding a learner waits for it to catch up).
    pub membership_timeout: Duration,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 50,
            // openraft 0.9 starts an election only after the leader lease (= the maximum)
            // plus this node's timeout (drawn once from min..max) without hearing a leader:
            // 300..400 ms here, still six heartbeats or more. 150..300 made failover take
            // 450..600 ms before the first vote was even asked for.
            election_timeout_min_ms: 100,
            election_timeout_max_ms: 200,
            snapshot_every_entries: 5000,
            max_in_snapshot_log_to_keep: 1000,
            max_batches_in_flight: 2,
            write_timeout: Duration::from_secs(5),
            membership_timeout: Duration::from_secs(30),
        }
    }
}

/// Per-chunk deadline of snapshot installation; chunks are up to 3 MiB.
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 2_000;

impl RaftConfig {
    pub(crate) fn to_openraft(&self) -> Result<openraft::Config, RaftError> {
        if self.max_batches_in_flight == 0 || self.write_timeout.is_zero() {
            return Err(RaftError::Config(
                "max_batches_in_flight and write_timeout must be positive".to_owned(),
            ));
        }
        if self.snapshot_every_entries == 0 {
            return Err(RaftError::Config(
                "snapshot_every_entries must be positive".to_owned(),
            ));
        }
        let config = openraft::Config {
            cluster_name: "stator".to_owned(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| RaftError::Config(e.to_string()))
    }
}
