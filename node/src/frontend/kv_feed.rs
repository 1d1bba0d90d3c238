//! The frontend's KV feed: one supervisor per frontend follows the replicated state and keeps a
//! `worker.kv_events` subscription to every worker of a live peer, applying what arrives to the
//! router's prefix index. A worker's entries are cleared when its stream breaks (it resends a
//! snapshot on reconnect) or when it leaves; reconnects back off, and each attempt and each
//! frame has a deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use stator_raft::model::{ClusterState, NodeStatus, WorkerId, WorkerState};
use stator_raft::RaftNode;
use stator_transport::Endpoint;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::router::Router;
use crate::worker::kv_events::{KvFeedFrame, KEEPALIVE_INTERVAL, KV_EVENTS_STREAM};

/// Opening a subscription (connect included) must succeed within this.
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(2);
/// Silence after which a subscription counts as broken (the worker sends keepalives).
const FRAME_DEADLINE: Duration = Duration::from_secs(3);
/// How often at most the supervisor looks at the worker set again; a worker that joins or
/// leaves is followed or dropped within this.
const RESCAN_INTERVAL: Duration = Duration::from_millis(100);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FeedError {
    #[error("the worker's blocks hold {worker} tokens, this router hashes {router}")]
    BlockSizeMismatch { worker: u32, router: usize },
    #[error("an event arrived before the snapshot began")]
    EventBeforeResync,
}

/// Where one subscription stands.
#[derive(Debug, Default)]
pub struct FeedState {
    synced: bool,
}

/// Applies one frame of `worker`'s feed to `router`.
pub fn apply_frame(
    router: &mut Router,
    worker: WorkerId,
    frame: &KvFeedFrame,
    feed: &mut FeedState,
) -> Result<(), FeedError> {
    match frame {
        KvFeedFrame::Resync { block_size } => {
            router.clear_kv(worker);
            let router_bs = router.config().block_size;
            if *block_size as usize != router_bs {
                return Err(FeedError::BlockSizeMismatch {
                    worker: *block_size,
                    router: router_bs,
                });
            }
            feed.synced = true;
        }
        KvFeedFrame::Event(event) => {
            if !feed.synced {
                return Err(FeedError::EventBeforeResync);
            }
            router.apply_kv_event(worker, event);
        }
        KvFeedFrame::Keepalive => {}
    }
    Ok(())
}

/// The workers a frontend follows: every worker that is not off, on a peer that is up.
pub fn feed_targets(state: &ClusterState) -> BTreeMap<WorkerId, SocketAddr> {
    state
        .workers
        .iter()
        .filter(|(_, w)| w.state != WorkerState::Off)
        .filter_map(|(id, _)| {
            let node = state.nodes.get(&id.node)?;
            if node.status != NodeStatus::Up {
                return None;
            }
            Some((*id, node.quic_addr.parse().ok()?))
        })
        .collect()
}

/// Subscriptions to stop (gone, or moved to a new address) and to start.
pub fn plan_subscriptions(
    running: &BTreeMap<WorkerId, SocketAddr>,
    wanted: &BTreeMap<WorkerId, SocketAddr>,
) -> (Vec<WorkerId>, Vec<(WorkerId, SocketAddr)>) {
    let stop = running
        .iter()
        .filter(|(id, addr)| wanted.get(id) != Some(addr))
        .map(|(id, _)| *id)
        .collect();
    let start = wanted
        .iter()
        .filter(|(id, addr)| running.get(id) != Some(addr))
        .map(|(id, addr)| (*id, *addr))
        .collect();
    (stop, start)
}

/// Doubling reconnect delay, back to the minimum once a subscription got going.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// Starts the supervisor; it stops when the router is dropped or the Raft state closes.
pub fn spawn(raft: Arc<RaftNode>, endpoint: Endpoint, router: &Arc<Mutex<Router>>) {
    tokio::spawn(supervise(raft, endpoint, Arc::downgrade(router)));
}

struct Subscription {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

async fn supervise(raft: Arc<RaftNode>, endpoint: Endpoint, router: Weak<Mutex<Router>>) {
    let mut state = raft.state();
    let mut running: BTreeMap<WorkerId, Subscription> = BTreeMap::new();
    loop {
        let wanted = feed_targets(&state.borrow_and_update());
        let addrs: BTreeMap<WorkerId, SocketAddr> =
            running.iter().map(|(id, s)| (*id, s.addr)).collect();
        let (stop, start) = plan_subscriptions(&addrs, &wanted);
        let Some(strong) = router.upgrade() else {
            break;
        };
        for worker in stop {
            if let Some(sub) = running.remove(&worker) {
                sub.task.abort();
            }
            strong.lock().clear_kv(worker);
            debug!(%worker, "stopped following the KV events of a worker that left");
        }
        for (worker, addr) in start {
            let task = tokio::spawn(follow(endpoint.clone(), worker, addr, router.clone()));
            running.insert(worker, Subscription { addr, task });
        }
        metrics::gauge!("stator_router_kv_feeds").set(running.len() as f64);
        metrics::gauge!("stator_router_indexed_blocks").set(strong.lock().indexed_blocks() as f64);
        drop(strong);
        if state.changed().await.is_err() {
            break;
        }
        // The state changes with every applied entry, thousands of times a second under
        // writes, and the workers almost never: look again at most every RESCAN_INTERVAL
        // (the changes in between are coalesced by the watch), not on every entry.
        tokio::time::sleep(RESCAN_INTERVAL).await;
    }
    for sub in running.into_values() {
        sub.task.abort();
    }
}

/// Keeps one worker's subscription up until the router is dropped (or the task is aborted).
async fn follow(
    endpoint: Endpoint,
    worker: WorkerId,
    addr: SocketAddr,
    router: Weak<Mutex<Router>>,
) {
    let mut backoff = Backoff::default();
    let mut warned = false;
    loop {
        let mut got_going = false;
        let broken = subscribe_once(&endpoint, worker, addr, &router, &mut got_going).await;
        let Some(strong) = router.upgrade() else {
            return;
        };
        {
            let mut guard = strong.lock();
            guard.clear_kv(worker);
            metrics::gauge!("stator_router_indexed_blocks").set(guard.indexed_blocks() as f64);
        }
        drop(strong);
        let Some(why) = broken else {
            return;
        };
        metrics::counter!("stator_router_kv_feed_breaks_total").increment(1);
        if got_going {
            backoff.reset();
            info!(%worker, %why, "KV event feed broke; resubscribing");
        } else if !warned {
            warned = true;
            warn!(%worker, %why, "cannot follow a worker's KV events yet; retrying with backoff");
        } else {
            debug!(%worker, %why, "KV event subscription failed again");
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One subscription attempt; `None` when the router is gone, else why it ended.
async fn subscribe_once(
    endpoint: &Endpoint,
    worker: WorkerId,
    addr: SocketAddr,
    router: &Weak<Mutex<Router>>,
    got_going: &mut bool,
) -> Option<String> {
    let opened = tokio::time::timeout(
        ATTEMPT_DEADLINE,
        endpoint.open_stream(addr, KV_EVENTS_STREAM),
    )
    .await;
    // The send half stays open, unused, so the worker sees us until we leave.
    let (_send, mut recv) = match opened {
        Err(_) => return Some(format!("no answer within {ATTEMPT_DEADLINE:?}")),
        Ok(Err(e)) => return Some(e.to_string()),
        Ok(Ok(halves)) => halves,
    };
    recv.set_frame_timeout(FRAME_DEADLINE.max(KEEPALIVE_INTERVAL * 2));
    let mut feed = FeedState::default();
    loop {
        let frame = match recv.recv::<KvFeedFrame>().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Some("the worker ended the stream".into()),
            Err(e) => return Some(e.to_string()),
        };
        let strong = router.upgrade()?;
        let mut guard = strong.lock();
        if let Err(e) = apply_frame(&mut guard, worker, &frame, &mut feed) {
            return Some(e.to_string());
        }
        *got_going = true;
        if !matches!(frame, KvFeedFrame::Keepalive) {
            metrics::gauge!("stator_router_indexed_blocks").set(guard.indexed_blocks() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::RouterConfig;
    use stator_gpu::kv::{BlockHash, KvEvent};
    use stator_raft::model::{NodeInfo, WorkerInfo, WorkerRole};

    fn w(node: u64) -> WorkerId {
        WorkerId { node, slot: 0 }
    }
    fn stored(n: u64) -> KvFeedFrame {
        KvFeedFrame::Event(KvEvent::Stored {
            hashes: (0..n).map(BlockHash).collect(),
        })
    }
    fn router() -> Router {
        let mut r = Router::new(RouterConfig::default());
        r.set_workers([
            (w(1), WorkerRole::Aggregated),
            (w(2), WorkerRole::Aggregated),
        ]);
        r
    }

    #[test]
    fn a_resync_replaces_what_the_worker_was_said_to_hold() {
        let mut r = router();
        let mut feed = FeedState::default();
        let resync = KvFeedFrame::Resync { block_size: 16 };
        apply_frame(&mut r, w(1), &resync, &mut feed).unwrap();
        apply_frame(&mut r, w(1), &stored(10), &mut feed).unwrap();
        apply_frame(
            &mut r,
            w(2),
            &KvFeedFrame::Resync { block_size: 16 },
            &mut FeedState::default(),
        )
        .unwrap();
        assert_eq!(r.indexed_blocks(), 10);
        // The worker lagged and starts over with a smaller snapshot.
        apply_frame(&mut r, w(1), &resync, &mut feed).unwrap();
        apply_frame(&mut r, w(1), &stored(3), &mut feed).unwrap();
        apply_frame(&mut r, w(1), &KvFeedFrame::Keepalive, &mut feed).unwrap();
        assert_eq!(r.indexed_blocks(), 3);
        let d = r
            .route(&(0..10).map(BlockHash).collect::<Vec<_>>(), 160, 0.0)
            .unwrap();
        assert_eq!((d.decode, d.cached_tokens), (w(1), 48));
    }

    #[test]
    fn bad_feeds_are_refused_and_leave_nothing_behind() {
        let mut r = router();
        assert_eq!(
            apply_frame(&mut r, w(1), &stored(4), &mut FeedState::default()),
            Err(FeedError::EventBeforeResync)
        );
        let mut feed = FeedState::default();
        assert_eq!(
            apply_frame(
                &mut r,
                w(1),
                &KvFeedFrame::Resync { block_size: 32 },
                &mut feed
            ),
            Err(FeedError::BlockSizeMismatch {
                worker: 32,
                router: 16
            })
        );
        assert_eq!(r.indexed_blocks(), 0);
    }

    fn node(addr: &str, status: NodeStatus) -> NodeInfo {
        crate::test_fixtures::node_info(addr, status)
    }

    fn worker(role: WorkerRole, state: WorkerState) -> WorkerInfo {
        crate::test_fixtures::worker_info(role, state)
    }

    #[test]
    fn the_feed_follows_live_workers_of_every_role_and_drops_the_rest() {
        let mut s = ClusterState::default();
        s.nodes.insert(1, node("127.0.0.1:7001", NodeStatus::Up));
        s.nodes.insert(2, node("127.0.0.1:7002", NodeStatus::Down));
        s.nodes.insert(3, node("127.0.0.1:7003", NodeStatus::Up));
        s.nodes.insert(4, node("127.0.0.1:7004", NodeStatus::Up));
        s.workers
            .insert(w(1), worker(WorkerRole::Prefill, WorkerState::Active));
        s.workers
            .insert(w(2), worker(WorkerRole::Decode, WorkerState::Active));
        s.workers
            .insert(w(3), worker(WorkerRole::Decode, WorkerState::Draining));
        s.workers
            .insert(w(4), worker(WorkerRole::Decode, WorkerState::Off));
        let wanted = feed_targets(&s);
        assert_eq!(wanted.keys().copied().collect::<Vec<_>>(), vec![w(1), w(3)]);

        let mut running = wanted.clone();
        running.insert(w(2), "127.0.0.1:7002".parse().unwrap());
        // 3 restarted on a new port.
        running.insert(w(3), "127.0.0.1:9999".parse().unwrap());
        let (stop, start) = plan_subscriptions(&running, &wanted);
        assert_eq!(stop, vec![w(2), w(3)]);
        assert_eq!(start, vec![(w(3), "127.0.0.1:7003".parse().unwrap())]);
    }

    #[test]
    fn reconnects_back_off_up_to_a_limit_and_reset_after_success() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert_eq!(delays[0], BACKOFF_MIN);
        assert_eq!(delays[1], BACKOFF_MIN * 2);
        assert_eq!(*delays.last().unwrap(), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }
}
