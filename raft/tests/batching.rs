//! The writer's batching: concurrent writes share log entries (group commit, no timer).

mod common;

use std::collections::BTreeSet;

use common::{localhost, put, start_peer};
use stator_raft::RaftConfig;
use stator_transport::ClusterCa;
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_log_entries() {
    const WRITES: usize = 64;
    // One entry at a time: everything submitted while it commits shares the next one.
    let cfg = RaftConfig {
        max_batches_in_flight: 1,
        ..RaftConfig::default()
    };
    let ca = ClusterCa::generate("raft-test").expect("ca");
    let dir = TempDir::new().expect("temp dir");
    let peer = start_peer(&ca, 4, dir.path(), localhost(), cfg).await;
    peer.node
        .bootstrap(peer.peer_addr())
        .await
        .expect("bootstrap");
    let node = &peer.node;
    let writes = (0..WRITES).map(|i| async move {
        node.write(vec![put(&format!("k{i}"), "v")])
            .await
            .expect("write")
            .index
    });
    let indexes: BTreeSet<u64> = futures::future::join_all(writes)
        .await
        .into_iter()
        .collect();
    assert!(
        indexes.len() <= WRITES / 4,
        "{WRITES} concurrent writes took {} entries",
        indexes.len()
    );
    peer.kill().await;
}
