//! One-node cluster: acknowledged writes survive a reopen, and snapshots keep the log bounded.

mod common;

use std::time::{Duration, Instant};

use common::{localhost, put, start_peer, state_of, test_config};
use stator_raft::RaftConfig;
use stator_transport::ClusterCa;
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_reopen() {
    let ca = ClusterCa::generate("raft-test").expect("ca");
    let dir = TempDir::new().expect("temp dir");
    let peer = start_peer(&ca, 7, dir.path(), localhost(), test_config()).await;
    peer.node
        .bootstrap(peer.peer_addr())
        .await
        .expect("bootstrap");
    let mut last_index = 0;
    for i in 0..200 {
        let outcome = peer
            .node
            .write(vec![put(&format!("k{i}"), &i.to_string())])
            .await
            .expect("write");
        assert!(outcome.index > last_index, "indexes grow");
        last_index = outcome.index;
    }
    let (id, addr, dir_path) = peer.kill().await;

    let peer = start_peer(&ca, id, &dir_path, addr, test_config()).await;
    assert!(peer.node.is_initialized());
    let state = state_of(&peer.node);
    for i in 0..200 {
        assert_eq!(
            state.meta.get(&format!("k{i}")),
            Some(&i.to_string()),
            "k{i} lost"
        );
    }
    // It elects itself again and accepts writes that continue the same log.
    let outcome = peer
        .node
        .write(vec![put("after-reopen", "1")])
        .await
        .expect("write after reopen");
    assert!(outcome.index > last_index);
    peer.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_keep_the_log_bounded() {
    const WRITERS: usize = 8;
    const WRITES_PER_WRITER: usize = 2500;
    const SNAPSHOT_EVERY: u64 = 1000;
    const KEEP: u64 = 100;
    let cfg = RaftConfig {
        snapshot_every_entries: SNAPSHOT_EVERY,
        max_in_snapshot_log_to_keep: KEEP,
        ..test_config()
    };
    let ca = ClusterCa::generate("raft-test").expect("ca");
    let dir = TempDir::new().expect("temp dir");
    let peer = start_peer(&ca, 9, dir.path(), localhost(), cfg.clone()).await;
    peer.node
        .bootstrap(peer.peer_addr())
        .await
        .expect("bootstrap");

    let started = Instant::now();
    let mut max_kept = 0;
    {
        let writers = (0..WRITERS).map(|w| {
            let node = &peer.node;
            async move {
                for i in 0..WRITES_PER_WRITER {
                    node.write(vec![put(&format!("w{w}-{i}"), "v")])
                        .await
                        .expect("write");
                }
            }
        });
        let all_writes = futures::future::join_all(writers);
        tokio::pin!(all_writes);
        loop {
            tokio::select! {
                _ = &mut all_writes => break,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    max_kept = max_kept.max(peer.node.log_entries_kept());
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let total = WRITERS * WRITES_PER_WRITER;
    let metrics = peer.node.metrics().borrow().clone();
    let last_index = metrics.last_log_index.unwrap_or(0);
    println!(
        "{total} commands in {elapsed:?} ({:.0} commands/s) over {last_index} entries; \
         at most {max_kept} entries kept",
        total as f64 / elapsed.as_secs_f64()
    );
    assert!(
        last_index > 2 * SNAPSHOT_EVERY,
        "too few entries ({last_index}) to exercise purging"
    );
    assert!(metrics.purged.is_some(), "log was never purged");
    let bound = (2 * SNAPSHOT_EVERY + KEEP) as usize;
    assert!(max_kept <= bound, "log grew to {max_kept} entries");
    assert_eq!(state_of(&peer.node).meta.len(), total);

    // Snapshot + remaining log rebuild the full state after a reopen.
    let (id, addr, dir_path) = peer.kill().await;
    let peer = start_peer(&ca, id, &dir_path, addr, cfg).await;
    assert_eq!(state_of(&peer.node).meta.len(), total);
    peer.kill().await;
}
