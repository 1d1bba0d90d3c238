//! A peer that dies without a word (SIGKILL) and comes back on the same address: the pooled
//! connection to its previous incarnation must not hold calls up until the idle timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{endpoint, serve_test_methods, Echo, Sleep};
use crate::{ClusterCa, Endpoint, TransportConfig};

/// Idle timeout long enough that a test passing well within it cannot have relied on it (QUIC
/// uses the shorter of both sides' idle timeouts, so every endpoint here gets it).
fn patient() -> TransportConfig {
    TransportConfig {
        keep_alive: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(20),
        ..TransportConfig::default()
    }
}

/// A peer on its own runtime, so that it can vanish without closing anything: shutting the
/// runtime down drops its tasks before they send a single packet, as SIGKILL would.
struct DoomedPeer {
    runtime: tokio::runtime::Runtime,
    endpoint: Endpoint,
}

impl DoomedPeer {
    fn start(ca: &ClusterCa, node_id: u64) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let endpoint = {
            let _inside = runtime.enter();
            endpoint(ca, node_id, patient())
        };
        serve_test_methods(&endpoint);
        Self { runtime, endpoint }
    }

    /// Vanishes silently; returns the address it held.
    fn kill(self) -> SocketAddr {
        let addr = self.endpoint.local_addr();
        self.runtime.shutdown_background();
        drop(self.endpoint);
        addr
    }
}

/// A new process on `addr` with a different node key: its stateless resets do not match the
/// old connection's tokens, so only our own liveness checks can end that connection.
fn restart_on(ca: &ClusterCa, addr: SocketAddr, node_id: u64) -> Endpoint {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let identity = ca.issue_identity(node_id).expect("identity");
        match Endpoint::bind(addr, identity, patient()) {
            Ok(endpoint) => {
                serve_test_methods(&endpoint);
                return endpoint;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "address not free yet");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_a_restarted_peer_long_before_the_idle_timeout() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = endpoint(&ca, 1, patient());
    let doomed = DoomedPeer::start(&ca, 2);
    let addr = doomed.endpoint.local_addr();
    assert_eq!(
        a.call::<Echo>(addr, &"before".into()).await.unwrap(),
        "before"
    );
    let addr = doomed.kill();
    let _b = restart_on(&ca, addr, 3);

    let started = Instant::now();
    let reached = loop {
        match a
            .call_timeout::<Echo>(addr, &"after".into(), Duration::from_millis(150))
            .await
        {
            Ok(reply) => break Some(reply),
            Err(_) if started.elapsed() < Duration::from_millis(1500) => {}
            Err(_) => break None,
        }
    };
    assert_eq!(reached.as_deref(), Some("after"));
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_connecting_anew_gets_the_old_connection_to_it_closed() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = endpoint(&ca, 1, patient());
    serve_test_methods(&a);
    let doomed = DoomedPeer::start(&ca, 2);
    let addr = doomed.endpoint.local_addr();
    a.call::<Echo>(addr, &"before".into()).await.unwrap();
    let old = a.raw_connection(addr).await.unwrap();
    let _ = doomed.kill();
    let b = restart_on(&ca, addr, 3);

    // The restarted peer calls us first, as a restarted Raft member does.
    let reply = b.call::<Echo>(a.local_addr(), &"hello".into()).await;
    assert_eq!(reply.unwrap(), "hello");
    let deadline = Instant::now() + Duration::from_millis(1500);
    while old.close_reason().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(old.close_reason().is_some(), "stale connection still open");
    let reply = a.call::<Echo>(addr, &"again".into()).await;
    assert_eq!(reply.unwrap(), "again");
}

#[tokio::test]
async fn a_slow_but_live_peer_keeps_its_connection_after_a_timeout() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = endpoint(&ca, 1, TransportConfig::default());
    let b = endpoint(&ca, 2, TransportConfig::default());
    serve_test_methods(&b);
    let addr = b.local_addr();
    let before = a.raw_connection(addr).await.unwrap();
    let slow = a
        .call_timeout::<Sleep>(addr, &500, Duration::from_millis(100))
        .await;
    assert!(slow.is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(before.close_reason().is_none());
    let after = a.raw_connection(addr).await.unwrap();
    assert_eq!(before.stable_id(), after.stable_id());
}
