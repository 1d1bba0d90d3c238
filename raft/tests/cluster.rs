//! Three in-process peers over real QUIC: bootstrap, membership, forwarded and batched writes,
//! leader loss, restart and catch-up, durability of acknowledged writes.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use common::{add_learners, eventually, localhost, put, start_peer, state_of, test_config, Peer};
use stator_raft::model::{Applied, Command, CommandError};
use stator_transport::ClusterCa;
use tempfile::TempDir;

async fn three_node_cluster(ca: &ClusterCa, dirs: &[TempDir; 3]) -> Vec<Peer> {
    let mut peers = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        peers.push(start_peer(ca, i as u64 + 1, dir.path(), localhost(), test_config()).await);
    }
    assert!(!peers[0].node.is_initialized());
    peers[0]
        .node
        .bootstrap(peers[0].peer_addr())
        .await
        .expect("bootstrap");
    assert!(peers[0].node.is_initialized());
    assert!(peers[0].node.is_leader());
    assert!(matches!(
        peers[0].node.bootstrap(peers[0].peer_addr()).await,
        Err(stator_raft::RaftError::AlreadyInitialized)
    ));

    add_learners(&peers).await;
    // Promote from a learner: the membership change is forwarded to the leader.
    peers[2]
        .node
        .change_voters(BTreeSet::from([1, 2, 3]))
        .await
        .expect("promote voters");
    for p in &peers {
        eventually(Duration::from_secs(3), "membership replicated", || {
            p.node.membership() == (BTreeSet::from([1, 2, 3]), BTreeSet::new())
        })
        .await;
    }
    peers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_forwards_batches_survives_leader_loss_and_catches_up() {
    let ca = ClusterCa::generate("raft-test").expect("ca");
    let dirs = [(); 3].map(|_| TempDir::new().expect("temp dir"));
    let mut peers = three_node_cluster(&ca, &dirs).await;
    let mut acknowledged: Vec<String> = Vec::new();

    // A write through a follower is forwarded, and applied on the writer when it returns.
    let outcome = peers[1]
        .node
        .write(vec![
            put("greeting", "hello"),
            Command::DeleteMeta {
                key: "missing".to_owned(),
            },
        ])
        .await
        .expect("forwarded write");
    assert_eq!(outcome.results[0], Ok(Applied::Done));
    assert_eq!(
        outcome.results[1],
        Err(CommandError::UnknownMetaKey("missing".to_owned()))
    );
    assert_eq!(state_of(&peers[1].node).meta["greeting"], "hello");
    acknowledged.push("greeting".to_owned());
    for p in &peers {
        eventually(Duration::from_secs(2), "replicated to every peer", || {
            state_of(&p.node).meta.contains_key("greeting")
        })
        .await;
    }

    // Concurrent writes from one follower share log entries.
    let writes = (0..100).map(|i| peers[2].node.write(vec![put(&format!("c{i}"), "x")]));
    let outcomes = futures::future::join_all(writes).await;
    let mut indexes = HashSet::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let outcome = outcome.expect("concurrent write");
        assert_eq!(outcome.results, vec![Ok(Applied::Done)]);
        indexes.insert(outcome.index);
        acknowledged.push(format!("c{i}"));
    }
    println!("100 concurrent writes used {} log entries", indexes.len());
    assert!(
        indexes.len() <= 20,
        "writes were not batched: {} entries",
        indexes.len()
    );

    // Kill the leader: the survivors elect a new one quickly and keep accepting writes.
    let leader_pos = peers
        .iter()
        .position(|p| p.node.is_leader())
        .expect("a leader");
    let old_leader = peers.remove(leader_pos);
    let killed_at = Instant::now();
    let (old_id, old_addr, old_dir) = old_leader.kill().await;
    let failover = eventually(Duration::from_secs(3), "new leader elected", || {
        peers
            .iter()
            .any(|p| p.node.is_leader() && p.node.leader().map(|l| l.0) != Some(old_id))
    })
    .await;
    println!(
        "new leader after {:?} (kill took {:?})",
        failover,
        killed_at.elapsed() - failover
    );
    assert!(
        failover < Duration::from_millis(1500),
        "failover took {failover:?}"
    );

    for (i, p) in peers.iter().enumerate() {
        let key = format!("after-failover-{i}");
        p.node
            .write(vec![put(&key, "y")])
            .await
            .expect("write after failover");
        acknowledged.push(key);
    }

    // Restart the killed node from its data dir at its address: it rejoins and catches up.
    let restarted = start_peer(&ca, old_id, &old_dir, old_addr, test_config()).await;
    assert!(
        restarted.node.is_initialized(),
        "membership survives restart"
    );
    peers.push(restarted);
    for p in &peers {
        eventually(
            Duration::from_secs(5),
            "every acknowledged write on every peer",
            || {
                let state = state_of(&p.node);
                acknowledged.iter().all(|k| state.meta.contains_key(k))
            },
        )
        .await;
    }
    // The restarted node serves linearizable reads and writes again.
    let restarted = peers.last().expect("restarted peer");
    let applied = restarted
        .node
        .linearizable_barrier()
        .await
        .expect("barrier");
    assert!(applied >= outcome.index);
    restarted
        .node
        .write(vec![put("from-restarted", "z")])
        .await
        .expect("write from restarted node");

    for p in peers {
        p.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_member_leaves_the_membership() {
    let ca = ClusterCa::generate("raft-test").expect("ca");
    let dirs = [(); 3].map(|_| TempDir::new().expect("temp dir"));
    let peers = three_node_cluster(&ca, &dirs).await;

    // Removing through a follower (forwarded); removing again is a no-op.
    peers[1].node.remove_member(3).await.expect("remove voter");
    peers[1].node.remove_member(3).await.expect("remove again");
    eventually(Duration::from_secs(3), "membership without 3", || {
        peers[0].node.membership() == (BTreeSet::from([1, 2]), BTreeSet::new())
    })
    .await;
    peers[0]
        .node
        .write(vec![put("two-voters", "ok")])
        .await
        .expect("write with two voters");

    for p in peers {
        p.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_learner_catches_up_from_a_snapshot() {
    let cfg = stator_raft::RaftConfig {
        snapshot_every_entries: 50,
        max_in_snapshot_log_to_keep: 0,
        ..test_config()
    };
    let ca = ClusterCa::generate("raft-test").expect("ca");
    let dirs = [(); 2].map(|_| TempDir::new().expect("temp dir"));
    let leader = start_peer(&ca, 1, dirs[0].path(), localhost(), cfg.clone()).await;
    leader
        .node
        .bootstrap(leader.peer_addr())
        .await
        .expect("bootstrap");
    for i in 0..300 {
        leader
            .node
            .write(vec![put(&format!("k{i}"), "v")])
            .await
            .expect("write");
    }
    eventually(Duration::from_secs(3), "leader purged its log", || {
        leader.node.metrics().borrow().purged.is_some()
    })
    .await;

    let learner = start_peer(&ca, 2, dirs[1].path(), localhost(), cfg).await;
    leader
        .node
        .add_learner(2, learner.peer_addr())
        .await
        .expect("add learner");
    eventually(Duration::from_secs(5), "learner has the full state", || {
        state_of(&learner.node).meta.len() == 300
    })
    .await;
    assert!(
        learner.node.metrics().borrow().snapshot.is_some(),
        "the learner was brought up by a snapshot"
    );
    assert_eq!(learner.node.membership().1, BTreeSet::from([2]));

    learner.kill().await;
    leader.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_fail_within_their_deadline_without_a_quorum() {
    let ca = ClusterCa::generate("raft-test").expect("ca");
    let dirs = [(); 3].map(|_| TempDir::new().expect("temp dir"));
    let write_timeout = Duration::from_millis(800);

    // Not part of any cluster yet: no leader will ever be known.
    let lonely_dir = TempDir::new().expect("temp dir");
    let cfg = stator_raft::RaftConfig {
        write_timeout,
        ..test_config()
    };
    let lonely = start_peer(&ca, 9, lonely_dir.path(), localhost(), cfg).await;
    let started = Instant::now();
    let result = lonely.node.write(vec![put("k", "v")]).await;
    assert!(
        matches!(result, Err(stator_raft::RaftError::NoLeader)),
        "{result:?}"
    );
    assert!(started.elapsed() < write_timeout + Duration::from_millis(500));
    lonely.kill().await;

    // A cluster that lost two of three voters cannot commit; the write gives up in time.
    let mut peers = three_node_cluster(&ca, &dirs).await;
    let survivor = peers.remove(0);
    for p in peers {
        p.kill().await;
    }
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        survivor.node.write(vec![put("lost", "v")]),
    )
    .await
    .expect("write returned");
    assert!(result.is_err(), "a write without quorum succeeded");
    println!(
        "write without quorum failed after {:?}: {:?}",
        started.elapsed(),
        result
    );
    assert!(started.elapsed() < test_config().write_timeout + Duration::from_secs(1));
    survivor.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_acknowledged_at_commit_is_seen_by_the_next_linearizable_read() {
    let ca = ClusterCa::generate("raft-test").expect("ca");
    let dirs = [(); 3].map(|_| TempDir::new().expect("temp dir"));
    let peers = three_node_cluster(&ca, &dirs).await;
    let follower = peers
        .iter()
        .find(|p| !p.node.is_leader())
        .expect("a follower");
    for i in 0..20 {
        let key = format!("committed{i}");
        let outcome = follower
            .node
            .write_committed(vec![put(&key, "v")])
            .await
            .expect("committed write");
        assert_eq!(outcome.results, vec![Ok(Applied::Done)]);
        // The barrier waits until this node has applied what the leader had committed, so a
        // read right after the acknowledgement sees the write.
        let read_index = follower.node.linearizable_barrier().await.expect("barrier");
        assert!(read_index >= outcome.index);
        assert_eq!(state_of(&follower.node).meta[&key], "v");
    }
    for p in peers {
        p.kill().await;
    }
}
