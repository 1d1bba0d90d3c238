//! The writer's batching: concurrent writes share log entries (group commit, no timer).

mod common;

use std::collections::BTreeSet;

use common::{add_learners, localhost, put, start_peer};
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

/// A follower's writes travel to the leader as one forwarded batch per entry of its own; the
/// leader puts what several followers forward at the same time into one log entry of its own
/// (every entry costs a flush on every member), so writes from different followers share
/// entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_forwarded_by_different_followers_share_log_entries() {
    // Per follower, writers that each wait for one write before sending the next, so that both
    // followers keep forwarding for a while.
    const WRITERS: usize = 8;
    const WRITES_PER_WRITER: usize = 8;
    const ROUNDS: usize = 5;
    let ca = ClusterCa::generate("raft-test").expect("ca");
    let dirs = [(); 3].map(|_| TempDir::new().expect("temp dir"));
    let mut peers = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        // The leader commits one entry at a time, so what arrives meanwhile waits for the
        // next; each follower keeps several forwards in flight, so some always wait.
        let cfg = RaftConfig {
            max_batches_in_flight: if i == 0 { 1 } else { 4 },
            ..RaftConfig::default()
        };
        peers.push(start_peer(&ca, i as u64 + 1, dir.path(), localhost(), cfg).await);
    }
    peers[0]
        .node
        .bootstrap(peers[0].peer_addr())
        .await
        .expect("bootstrap");
    add_learners(&peers).await;
    // One write each first, so that both followers have their connection to the leader before
    // the measured writes start together.
    for (follower, peer) in peers.iter().enumerate().skip(1) {
        peer.node
            .write(vec![put(&format!("f{follower}-warm-up"), "v")])
            .await
            .expect("first forwarded write");
    }
    let indexes_of = |follower: usize| {
        let node = &peers[follower].node;
        async move {
            let writers = (0..WRITERS).map(|w| async move {
                let mut indexes = Vec::new();
                for i in 0..WRITES_PER_WRITER {
                    let key = format!("f{follower}-w{w}-{i}");
                    let written = node.write(vec![put(&key, "v")]).await;
                    indexes.push(written.expect("forwarded write").index);
                }
                indexes
            });
            futures::future::join_all(writers)
                .await
                .into_iter()
                .flatten()
                .collect::<BTreeSet<u64>>()
        }
    };
    // Closed-loop writers can fall into lockstep (each follower's forward alone in every other
    // entry), so a few rounds are allowed; one shared entry is enough, and without the leader
    // coalescing forwarded writes there is none in any round.
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let (first, second) = tokio::join!(indexes_of(1), indexes_of(2));
        if first.intersection(&second).next().is_some() {
            break;
        }
        rounds.push((first, second));
    }
    assert!(
        rounds.len() < ROUNDS,
        "no entry carries writes of both followers: {rounds:?}"
    );
    for peer in peers {
        peer.kill().await;
    }
}
