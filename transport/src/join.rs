//! Calls from a node that has no cluster certificate yet.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::TransportConfig;
use crate::endpoint::{call_on, JOIN_MAX_FRAME_BYTES};
use crate::error::RpcError;
use crate::method::Method;
use crate::metrics;
use crate::pki::names::CLUSTER_DNS_NAME;
use crate::pki::JoinToken;
use crate::tls;
use crate::wire::{close, decode, encode};

/// Closes the temporary endpoint however the call ends, deadline cancellation included.
struct CloseOnDrop(quinn::Endpoint);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(close::SHUTDOWN, b"join call done");
    }
}

/// Calls a join-registered method `M` on the peer at `addr` without a cluster certificate.
/// The server is trusted only if it presents the CA named by `token`'s fingerprint and a node
/// certificate signed by it. `timeout` bounds everything.
pub async fn call_join<M: Method>(
    addr: SocketAddr,
    token: &JoinToken,
    req: &M::Request,
    timeout: Duration,
) -> Result<M::Response, RpcError> {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, call_join_untimed::<M>(addr, token, req))
        .await
        .unwrap_or(Err(RpcError::Timeout));
    metrics::rpc_finished(M::NAME, started.elapsed(), result.as_ref().map(|_| ()));
    result
}

async fn call_join_untimed<M: Method>(
    addr: SocketAddr,
    token: &JoinToken,
    req: &M::Request,
) -> Result<M::Response, RpcError> {
    let payload = encode(req)?;
    let crypto = tls::join_client_config(token.ca_fingerprint)
        .map_err(|e| RpcError::Connect(e.to_string()))?;
    let quic = TransportConfig::default()
        .quic()
        .map_err(|e| RpcError::Connect(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(quic));
    let local: SocketAddr = if addr.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = quinn::Endpoint::client(local)
        .map_err(|e| RpcError::Connect(format!("cannot bind a local UDP socket: {e}")))?;
    let _close = CloseOnDrop(endpoint.clone());
    let conn = endpoint
        .connect_with(client, addr, CLUSTER_DNS_NAME)
        .map_err(|e| RpcError::Connect(format!("{addr}: {e}")))?
        .await
        .map_err(|e| RpcError::Connect(format!("{addr}: {e}")))?;
    metrics::track_connection(&conn);
    let response = call_on(
        &conn,
        M::NAME,
        payload,
        JOIN_MAX_FRAME_BYTES,
        &addr.to_string(),
    )
    .await;
    conn.close(close::SHUTDOWN, b"join call done");
    decode(&response?)
}
