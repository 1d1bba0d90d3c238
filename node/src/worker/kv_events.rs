//! What routers need from this worker: its KV events on the `worker.kv_events` stream and its
//! engine's load in this peer's heartbeats.
//!
//! A subscriber must get a snapshot of the cached blocks and then every later event, with no
//! gap and no overlap. The engine's broadcast alone cannot give that (a late subscriber missed
//! what came before), so a [`KvMirror`] subscribes from the engine's start, keeps the set of
//! stored hashes, and republishes every event on its own broadcast *under the same lock* it
//! applies them with: copying the set and subscribing under that lock is an exact cut.
//!
//! Lagging: when the mirror falls behind the engine's broadcast it cannot know what it missed,
//! so it clears its set and publishes `Reset`; a subscriber that falls behind the mirror (or
//! sees a `Reset`) sends `Resync` and a fresh snapshot. Either way the router forgets the
//! worker's blocks and relearns them: after a lag it may under-count a cache hit, never claim
//! blocks the worker does not hold.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use stator_gpu::engine::EngineHandle;
use stator_gpu::kv::{BlockHash, KvEvent};
use stator_transport::{Endpoint, FramedRecv, FramedSend, PeerInfo};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::cluster::load::LoadBoard;
use crate::cluster::rpc::LoadReport;

/// Name of the raw stream the worker serves.
pub const KV_EVENTS_STREAM: &str = "worker.kv_events";
/// Snapshot hashes per frame (about 40 KB), so a large cache never makes one huge frame.
pub const SNAPSHOT_CHUNK: usize = 4096;
/// The worker sends `Keepalive` after this much silence; subscribers give up after a few.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Mirror events buffered per subscriber before it counts as lagging.
const MIRROR_BUFFER: usize = 4096;

/// The worker's frames on `worker.kv_events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KvFeedFrame {
    /// Forget everything this worker was said to hold: a snapshot follows as `Event(Stored)`
    /// frames, then live events. Always the first frame; `block_size` is what its hashes cover.
    Resync {
        block_size: u32,
    },
    Event(KvEvent),
    /// Nothing happened for a while; the stream is alive.
    Keepalive,
}

/// What the mirror republishes.
#[derive(Clone, Debug, PartialEq)]
pub enum MirrorEvent {
    Kv(KvEvent),
    /// The mirror lost events and cleared its set.
    Reset,
}

struct MirrorInner {
    cached: HashSet<BlockHash>,
    out: broadcast::Sender<MirrorEvent>,
}

/// The set of blocks the engine holds, kept from its KV events (sans-IO: fed by [`Self::apply`]).
#[derive(Clone)]
pub struct KvMirror {
    inner: Arc<Mutex<MirrorInner>>,
}

impl Default for KvMirror {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(MirrorInner {
                cached: HashSet::new(),
                out: broadcast::channel(MIRROR_BUFFER).0,
            })),
        }
    }
}

impl KvMirror {
    pub fn apply(&self, event: KvEvent) {
        let mut inner = self.inner.lock();
        match &event {
            KvEvent::Stored { hashes } => inner.cached.extend(hashes.iter().copied()),
            KvEvent::Removed { hashes } => {
                for h in hashes {
                    inner.cached.remove(h);
                }
            }
        }
        let _ = inner.out.send(MirrorEvent::Kv(event));
    }

    /// The engine's events were lost: the set can no longer be trusted.
    pub fn reset(&self) {
        let mut inner = self.inner.lock();
        inner.cached.clear();
        let _ = inner.out.send(MirrorEvent::Reset);
        metrics::counter!("stator_worker_kv_mirror_resets_total").increment(1);
    }

    /// Every hash held now, and a receiver of exactly the events after that moment.
    pub fn subscribe(&self) -> (Vec<BlockHash>, broadcast::Receiver<MirrorEvent>) {
        let inner = self.inner.lock();
        (
            inner.cached.iter().copied().collect(),
            inner.out.subscribe(),
        )
    }

    pub fn len(&self) -> usize {
        self.inner.lock().cached.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps `mirror` in step with the engine's broadcast until the engine goes away.
pub async fn run_mirror(mut events: broadcast::Receiver<KvEvent>, mirror: KvMirror) {
    loop {
        match events.recv().await {
            Ok(event) => mirror.apply(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(
                    missed,
                    "KV event mirror fell behind the engine; routers relearn this worker's cache"
                );
                mirror.reset();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Starts the mirror on `engine`'s KV events, serves [`KV_EVENTS_STREAM`] from it, and makes the
/// engine's stats this peer's reported load.
pub fn publish(endpoint: &Endpoint, engine: &EngineHandle, load: &LoadBoard) {
    let mirror = KvMirror::default();
    tokio::spawn(run_mirror(engine.subscribe_kv_events(), mirror.clone()));
    let block_size = engine.kv_layout().block_size as u32;
    endpoint.register_stream(KV_EVENTS_STREAM, move |peer, send, recv| {
        serve_subscriber(peer, send, recv, mirror.clone(), block_size)
    });
    let stats = engine.clone();
    load.set_source(Box::new(move || load_report(&stats)));
}

fn load_report(engine: &EngineHandle) -> LoadReport {
    let s = engine.stats();
    let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    LoadReport {
        queue_depth: clamp(s.waiting),
        running_seqs: clamp(s.running),
        kv_blocks_used: clamp(s.kv_blocks_used),
        kv_blocks_total: clamp(s.kv_blocks_total),
    }
}

async fn serve_subscriber(
    peer: PeerInfo,
    mut send: FramedSend,
    recv: FramedRecv,
    mirror: KvMirror,
    block_size: u32,
) {
    metrics::gauge!("stator_worker_kv_subscribers").increment(1.0);
    let ended = stream_to(&mut send, &mirror, block_size).await;
    metrics::gauge!("stator_worker_kv_subscribers").decrement(1.0);
    debug!(peer = ?peer.node_id, reason = %ended, "KV event subscriber gone");
    drop(recv);
}

/// Sends snapshot + events until a send fails (each send has the transport's frame deadline,
/// so a subscriber that stops reading is dropped).
async fn stream_to(send: &mut FramedSend, mirror: &KvMirror, block_size: u32) -> String {
    loop {
        let (snapshot, mut events) = mirror.subscribe();
        if let Err(e) = send_snapshot(send, block_size, snapshot).await {
            return e.to_string();
        }
        loop {
            let waited = tokio::time::timeout(KEEPALIVE_INTERVAL, events.recv()).await;
            let frame = match next_step(waited.ok()) {
                Step::Send(frame) => frame,
                Step::Resync => break,
                Step::Stop => return "engine stopped".into(),
            };
            if let Err(e) = send.send(&frame).await {
                return e.to_string();
            }
        }
    }
}

/// What a subscriber's stream does next.
#[derive(Debug, PartialEq)]
enum Step {
    Send(KvFeedFrame),
    /// Start over with `Resync` and a fresh snapshot.
    Resync,
    Stop,
}

/// `received`: the mirror's next event, or `None` when nothing came for a keepalive interval.
fn next_step(received: Option<Result<MirrorEvent, broadcast::error::RecvError>>) -> Step {
    match received {
        None => Step::Send(KvFeedFrame::Keepalive),
        Some(Ok(MirrorEvent::Kv(event))) => Step::Send(KvFeedFrame::Event(event)),
        // Either the mirror lost events, or this subscriber fell behind the mirror: the events
        // it would send next no longer follow what it sent before.
        Some(Ok(MirrorEvent::Reset)) | Some(Err(broadcast::error::RecvError::Lagged(_))) => {
            Step::Resync
        }
        Some(Err(broadcast::error::RecvError::Closed)) => Step::Stop,
    }
}

async fn send_snapshot(
    send: &mut FramedSend,
    block_size: u32,
    snapshot: Vec<BlockHash>,
) -> Result<(), stator_transport::RpcError> {
    send.send(&KvFeedFrame::Resync { block_size }).await?;
    for chunk in snapshot.chunks(SNAPSHOT_CHUNK) {
        let frame = KvFeedFrame::Event(KvEvent::Stored {
            hashes: chunk.to_vec(),
        });
        send.send(&frame).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(ids: &[u64]) -> KvEvent {
        KvEvent::Stored {
            hashes: ids.iter().map(|i| BlockHash(*i)).collect(),
        }
    }
    fn removed(ids: &[u64]) -> KvEvent {
        KvEvent::Removed {
            hashes: ids.iter().map(|i| BlockHash(*i)).collect(),
        }
    }

    /// What a subscriber ends up believing: its snapshot, then every event it received.
    fn replay(snapshot: Vec<BlockHash>, rx: &mut broadcast::Receiver<MirrorEvent>) -> Vec<u64> {
        let mut held: HashSet<u64> = snapshot.into_iter().map(|h| h.0).collect();
        while let Ok(event) = rx.try_recv() {
            match event {
                MirrorEvent::Kv(KvEvent::Stored { hashes }) => {
                    held.extend(hashes.iter().map(|h| h.0))
                }
                MirrorEvent::Kv(KvEvent::Removed { hashes }) => {
                    for h in hashes {
                        held.remove(&h.0);
                    }
                }
                MirrorEvent::Reset => held.clear(),
            }
        }
        let mut v: Vec<u64> = held.into_iter().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn a_late_subscriber_gets_snapshot_then_exactly_the_later_events() {
        let mirror = KvMirror::default();
        mirror.apply(stored(&[1, 2, 3]));
        mirror.apply(removed(&[2]));
        let (snapshot, mut rx) = mirror.subscribe();
        let mut snap: Vec<u64> = snapshot.iter().map(|h| h.0).collect();
        snap.sort_unstable();
        assert_eq!(snap, vec![1, 3]);
        mirror.apply(stored(&[4]));
        mirror.apply(removed(&[1]));
        // Nothing from before the snapshot is repeated, nothing after it is missing.
        assert_eq!(rx.try_recv(), Ok(MirrorEvent::Kv(stored(&[4]))));
        assert_eq!(rx.try_recv(), Ok(MirrorEvent::Kv(removed(&[1]))));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn subscribing_while_events_flow_never_loses_or_repeats_one() {
        let mirror = KvMirror::default();
        let writer = {
            let mirror = mirror.clone();
            std::thread::spawn(move || {
                for i in 0..2000u64 {
                    mirror.apply(stored(&[i]));
                    if i % 3 == 0 {
                        mirror.apply(removed(&[i / 2]));
                    }
                }
            })
        };
        let mut subscribers = Vec::new();
        for _ in 0..20 {
            subscribers.push(mirror.subscribe());
            std::thread::yield_now();
        }
        writer.join().ok();
        let (truth, _) = mirror.subscribe();
        let mut truth: Vec<u64> = truth.iter().map(|h| h.0).collect();
        truth.sort_unstable();
        for (snapshot, mut rx) in subscribers {
            assert_eq!(replay(snapshot, &mut rx), truth);
        }
    }

    #[test]
    fn a_subscriber_that_falls_behind_starts_over_with_a_snapshot() {
        let mirror = KvMirror::default();
        let (_, mut slow) = mirror.subscribe();
        for i in 0..(MIRROR_BUFFER as u64 + 10) {
            mirror.apply(stored(&[i]));
        }
        assert_eq!(
            next_step(Some(slow.try_recv().map_err(|e| match e {
                broadcast::error::TryRecvError::Lagged(n) => broadcast::error::RecvError::Lagged(n),
                _ => broadcast::error::RecvError::Closed,
            }))),
            Step::Resync
        );
        assert_eq!(next_step(Some(Ok(MirrorEvent::Reset))), Step::Resync);
        assert_eq!(next_step(None), Step::Send(KvFeedFrame::Keepalive));
        assert_eq!(
            next_step(Some(Err(broadcast::error::RecvError::Closed))),
            Step::Stop
        );
        // Starting over: the fresh snapshot holds everything, the new receiver nothing old.
        let (snapshot, mut fresh) = mirror.subscribe();
        assert_eq!(snapshot.len(), MIRROR_BUFFER + 10);
        assert!(fresh.try_recv().is_err());
    }

    #[tokio::test]
    async fn an_engine_lag_resets_the_mirror_and_tells_subscribers() {
        let (engine_tx, engine_rx) = broadcast::channel(4);
        let mirror = KvMirror::default();
        engine_tx.send(stored(&[1])).ok();
        // The mirror starts late: 10 events into a buffer of 4 means it lagged.
        for i in 2..12 {
            engine_tx.send(stored(&[i])).ok();
        }
        let (_, mut rx) = mirror.subscribe();
        let task = tokio::spawn(run_mirror(engine_rx, mirror.clone()));
        drop(engine_tx);
        task.await.ok();
        assert_eq!(rx.try_recv(), Ok(MirrorEvent::Reset));
        // After the reset only what it saw afterwards is claimed: the last 4 events.
        let mut held: Vec<u64> = mirror.subscribe().0.iter().map(|h| h.0).collect();
        held.sort_unstable();
        assert_eq!(held, vec![8, 9, 10, 11]);
    }
}
