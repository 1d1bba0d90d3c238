//! The writer's batching: a lone write goes out at once, concurrent writes share entries.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{localhost, put, start_peer};
use stator_raft::RaftConfig;
use stator_transport::ClusterCa;
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_write_does_not_wait_out_the_batch_window() {
    let window = Duration::from_millis(400);
    let cfg = RaftConfig {
        batch_window: window,
        ..RaftConfig::default()
    };
    let ca = ClusterCa::generate("raft-test").expect("ca");
    let dir = TempDir::new().expect("temp dir");
    let peer = start_peer(&ca, 3, dir.path(), localhost(), cfg).await;
    peer.node
        .bootstrap(peer.peer_addr())
        .await
        .expect("bootstrap");
    for i in 0..5 {
        let started = Instant::now();
        peer.node
            .write(vec![put(&format!("k{i}"), "v")])
            .await
            .expect("write");
        assert!(
            started.elapsed() < window / 2,
            "write {i} took {:?}, as if it waited for company",
            started.elapsed()
        );
    }
    peer.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_log_entries() {
    const WRITES: usize = 64;
    let cfg = RaftConfig {
        batch_window: Duration::from_millis(50),
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
