//! Liveness checks of pooled connections. A pooled connection can outlive its peer: SIGKILL
//! sends nothing, and a restarted peer answers our packets with a stateless reset only when
//! one reaches it, which a connection that lost its peer sends ever more rarely (loss
//! recovery backs off). Calls on it then time out until the idle timeout, which stalled Raft
//! heartbeats to a restarted member long enough for it to start a disruptive election.
//!
//! A probe is one round trip on the connection: a live peer answers (any datagram will do),
//! a dead connection is closed so that the next call reconnects at once. A probe runs when a
//! call went by without a single datagram from the peer, and when the peer connects to us
//! anew (it may have restarted). One silent call alone proves nothing: when this process
//! stalls (a busy host), the peer's answers wait unread in the socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::method::PeerInfo;

use super::{call_on, close_unresponsive, Shared};

/// Several loopback or LAN round trips plus the peer's acknowledgement delay (25 ms), yet
/// short enough that a restarted Raft member hears its leader within its election timeout.
/// A false verdict on a live peer costs one reconnect.
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// Not a registered method: a live peer answers with an "unknown method" error.
const PROBE_METHOD: &str = "transport.probe";

/// Probes the pooled connection to `addr`, if there is one (a peer connected to us anew).
pub(crate) async fn probe_pooled(shared: Arc<Shared>, addr: SocketAddr) {
    if let Some((conn, peer)) = shared.pool.open_connection(addr).await {
        spawn_probe(shared, conn, peer);
    }
}

/// Probes `conn` on its own task unless a probe of it is already running.
pub(crate) fn spawn_probe(shared: Arc<Shared>, conn: quinn::Connection, peer: PeerInfo) {
    let id = conn.stable_id();
    if !shared.pool.begin_probe(id) {
        return;
    }
    tokio::spawn(async move {
        let heard_before = conn.stats().udp_rx.datagrams;
        let label = peer.label();
        let probe = call_on(
            &conn,
            PROBE_METHOD,
            Vec::new(),
            shared.cfg.max_frame_bytes,
            &label,
        );
        let answered = tokio::time::timeout(PROBE_TIMEOUT, probe).await.is_ok();
        if !answered && conn.stats().udp_rx.datagrams == heard_before {
            close_unresponsive(&conn, peer.addr);
        }
        shared.pool.end_probe(id);
    });
}
