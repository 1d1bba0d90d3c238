//! Tests with real endpoints on 127.0.0.1.

mod auth;
mod metrics;
mod metrics_capture;
mod pki;
mod restart;
mod rpc;
mod sessions;
mod streams;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{ClusterCa, Endpoint, Method, PeerInfo, RpcError, TransportConfig};

pub(crate) struct Echo;
impl Method for Echo {
    const NAME: &'static str = "test.echo";
    type Request = String;
    type Response = String;
}

/// Answers with the caller's node id as the server saw it.
pub(crate) struct WhoAmI;
impl Method for WhoAmI {
    const NAME: &'static str = "test.who_am_i";
    type Request = ();
    type Response = Option<u64>;
}

pub(crate) struct Fail;
impl Method for Fail {
    const NAME: &'static str = "test.fail";
    type Request = String;
    type Response = ();
}

/// Sleeps for the requested number of milliseconds.
pub(crate) struct Sleep;
impl Method for Sleep {
    const NAME: &'static str = "test.sleep";
    type Request = u64;
    type Response = ();
}

pub(crate) fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub(crate) fn endpoint(ca: &ClusterCa, node_id: u64, cfg: TransportConfig) -> Endpoint {
    let identity = ca.issue_identity(node_id).expect("identity");
    Endpoint::bind(any_port(), identity, cfg).expect("bind")
}

/// Registers the test methods; returns how often any handler ran.
pub(crate) fn serve_test_methods(endpoint: &Endpoint) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    endpoint.register::<Echo, _, _>(move |_peer, text| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { Ok(text) }
    });
    let counter = calls.clone();
    endpoint.register::<WhoAmI, _, _>(move |peer: PeerInfo, ()| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { Ok(peer.node_id) }
    });
    endpoint.register::<Fail, _, _>(|_peer, why| async move { Err(RpcError::Remote(why)) });
    endpoint.register::<Sleep, _, _>(|_peer, millis| async move {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok(())
    });
    calls
}

/// A CA and two endpoints (nodes 1 and 2) serving the test methods.
pub(crate) struct Pair {
    pub(crate) ca: ClusterCa,
    pub(crate) a: Endpoint,
    pub(crate) b: Endpoint,
    pub(crate) b_calls: Arc<AtomicUsize>,
}

pub(crate) fn pair_with(cfg_b: TransportConfig) -> Pair {
    let ca = ClusterCa::generate("test").expect("CA");
    let a = endpoint(&ca, 1, TransportConfig::default());
    let b = endpoint(&ca, 2, cfg_b);
    serve_test_methods(&a);
    let b_calls = serve_test_methods(&b);
    Pair { ca, a, b, b_calls }
}

pub(crate) fn pair() -> Pair {
    pair_with(TransportConfig::default())
}
