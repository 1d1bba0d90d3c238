//! Self-fencing: a worker streams only while this peer has recently confirmed, through a
//! quorum, that its view of the leases is current.
//!
//! The signal is a read-index barrier through the leader (`RaftNode::linearizable_barrier`):
//! it succeeds only when the leader still has a quorum, and it returns after this peer has
//! applied everything committed before the barrier started. A barrier that *started* at `t`
//! and succeeded proves the local state held every lease change committed before `t`; so the
//! clock records start times, and a barrier that began before a freeze (SIGSTOP, long GC, a
//! partition) cannot make a frozen peer look fresh after it resumes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use stator_raft::RaftNode;
use tokio::sync::watch;
use tracing::debug;

/// Sans-IO: when was quorum contact last proven, and is that too long ago.
#[derive(Debug, Clone)]
pub struct FenceClock {
    confirmed_at: Option<Instant>,
    lease_timeout: Duration,
}

impl FenceClock {
    pub fn new(lease_timeout: Duration) -> Self {
        Self {
            confirmed_at: None,
            lease_timeout,
        }
    }

    /// A barrier that started at `started` succeeded.
    pub fn confirmed(&mut self, started: Instant) {
        if self.confirmed_at.is_none_or(|t| started > t) {
            self.confirmed_at = Some(started);
        }
    }

    /// True when this peer must not stream: no quorum contact proven within `lease_timeout`.
    pub fn is_fenced(&self, now: Instant) -> bool {
        match self.confirmed_at {
            None => true,
            Some(t) => now.saturating_duration_since(t) > self.lease_timeout,
        }
    }
}

/// Shared handle of the fence, refreshed by [`run_fence`].
#[derive(Clone, Debug)]
pub struct Fence {
    clock: Arc<Mutex<FenceClock>>,
}

impl Fence {
    pub fn new(lease_timeout: Duration) -> Self {
        Self {
            clock: Arc::new(Mutex::new(FenceClock::new(lease_timeout))),
        }
    }

    pub fn is_fenced(&self) -> bool {
        self.clock.lock().is_fenced(Instant::now())
    }

    fn confirmed(&self, started: Instant) {
        self.clock.lock().confirmed(started);
    }
}

/// Proves quorum contact every `lease_timeout / 4`, one barrier at a time; a barrier slower
/// than `lease_timeout` proves nothing useful and is abandoned.
pub async fn run_fence(
    raft: Arc<RaftNode>,
    fence: Fence,
    lease_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let period = (lease_timeout / 4).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        match tokio::time::timeout(lease_timeout, raft.linearizable_barrier()).await {
            Ok(Ok(_)) => fence.confirmed(started),
            Ok(Err(e)) => debug!(error = %e, "quorum barrier failed"),
            Err(_) => debug!("quorum barrier timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_fenced_until_contact_and_again_after_the_lease_timeout() {
        let t0 = Instant::now();
        let mut c = FenceClock::new(Duration::from_millis(500));
        assert!(c.is_fenced(t0), "no contact proven yet");
        c.confirmed(t0);
        assert!(!c.is_fenced(t0 + Duration::from_millis(400)));
        assert!(c.is_fenced(t0 + Duration::from_millis(600)));
    }

    #[test]
    fn a_barrier_started_before_a_freeze_does_not_unfence_after_it() {
        let t0 = Instant::now();
        let mut c = FenceClock::new(Duration::from_millis(500));
        c.confirmed(t0 + Duration::from_millis(100));
        // An older barrier finishing late never moves the clock back or forward.
        c.confirmed(t0);
        assert!(c.is_fenced(t0 + Duration::from_millis(700)));
    }
}
