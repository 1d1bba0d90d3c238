//! openraft's network over the QUIC transport: the client side (`RaftNetworkFactory`) and the
//! server side (handlers registered on the [`Endpoint`] that call into the local `Raft`).

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError as OpenRaftError,
    RemoteError as OpenRaftRemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, RPCTypes};
use stator_transport::{Endpoint, Method, RpcError};

use crate::rpc::{AppendMethod, SnapshotMethod, VoteMethod};
use crate::types::{NodeId, PeerAddr, TypeConfig};

/// Pause before retrying an unreachable peer: two heartbeats, so that a restarted member
/// hears the leader well within its election timeout (300..400 ms); long enough not to spin
/// on a dead one.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(100);
/// Bound on resolving a peer's host name (k8s DNS names).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct TransportNetworkFactory {
    endpoint: Endpoint,
}

impl TransportNetworkFactory {
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }
}

impl RaftNetworkFactory<TypeConfig> for TransportNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerAddr) -> PeerClient {
        PeerClient {
            endpoint: self.endpoint.clone(),
            local: self.endpoint.node_id(),
            target,
            addr: node.quic.clone(),
        }
    }
}

/// Raft RPCs towards one peer.
pub struct PeerClient {
    endpoint: Endpoint,
    local: NodeId,
    target: NodeId,
    addr: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve peer address {addr:?}: {reason}")]
struct ResolveError {
    addr: String,
    reason: String,
}

/// Accepts a literal socket address or a `host:port` to look up (with a deadline).
pub(crate) async fn resolve_peer(addr: &str) -> Result<SocketAddr, RpcError> {
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        return Ok(sock);
    }
    let fail = |reason: String| {
        RpcError::Connect(
            ResolveError {
                addr: addr.to_owned(),
                reason,
            }
            .to_string(),
        )
    };
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(addr)).await {
        Err(_) => Err(fail("lookup timed out".to_owned())),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| fail("no addresses".to_owned())),
    }
}

impl PeerClient {
    async fn call<M, E>(
        &self,
        action: RPCTypes,
        req: &M::Request,
        option: &RPCOption,
    ) -> Result<M::Response, RPCError<NodeId, PeerAddr, E>>
    where
        M: Method,
        E: StdError,
    {
        let result = match resolve_peer(&self.addr).await {
            Ok(sock) => {
                self.endpoint
                    .call_timeout::<M>(sock, req, option.hard_ttl())
                    .await
            }
            Err(e) => Err(e),
        };
        result.map_err(|e| {
            tracing::debug!(target_node = self.target, addr = %self.addr, %action, error = %e, "raft rpc failed");
            map_transport_error(self.local, self.target, action, option.hard_ttl(), e)
        })
    }

    fn remote<E: StdError>(&self, e: E) -> RPCError<NodeId, PeerAddr, E> {
        RPCError::RemoteError(OpenRaftRemoteError::new(self.target, e))
    }
}

/// Unreachable makes openraft back off; Network retries at once; Timeout is a timeout. A
/// closed connection is retried at once: the next call reconnects, and when the peer is gone
/// that attempt times out instead of spinning.
fn map_transport_error<E: StdError>(
    local: NodeId,
    target: NodeId,
    action: RPCTypes,
    timeout: Duration,
    e: RpcError,
) -> RPCError<NodeId, PeerAddr, E> {
    match e {
        RpcError::Timeout => RPCError::Timeout(Timeout {
            action,
            id: local,
            target,
            timeout,
        }),
        RpcError::FrameTooLarge { .. } if action == RPCTypes::AppendEntries => {
            RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(1).with_source_error(&e))
        }
        // The peer is down, restarting (methods not registered yet) or not trusting us yet.
        RpcError::Connect(_) | RpcError::UnknownMethod(_) | RpcError::NotAuthorized(_) => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        other => RPCError::Network(NetworkError::from(AnyError::new(&other))),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerAddr, OpenRaftError<NodeId>>>
    {
        self.call::<AppendMethod, _>(RPCTypes::AppendEntries, &rpc, &option)
            .await?
            .map_err(|e| self.remote(e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerAddr, OpenRaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call::<SnapshotMethod, _>(RPCTypes::InstallSnapshot, &rpc, &option)
            .await?
            .map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerAddr, OpenRaftError<NodeId>>> {
        self.call::<VoteMethod, _>(RPCTypes::Vote, &rpc, &option)
            .await?
            .map_err(|e| self.remote(e))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(action: RPCTypes, e: RpcError) -> RPCError<NodeId, PeerAddr, OpenRaftError<NodeId>> {
        map_transport_error(1, 2, action, Duration::from_millis(100), e)
    }

    #[test]
    fn transport_errors_map_to_what_makes_openraft_back_off_or_retry() {
        for down in [
            RpcError::Connect("refused".into()),
            RpcError::UnknownMethod("raft.vote".into()),
            RpcError::NotAuthorized("no cert".into()),
        ] {
            assert!(matches!(
                map(RPCTypes::Vote, down),
                RPCError::Unreachable(_)
            ));
        }
        match map(RPCTypes::AppendEntries, RpcError::Timeout) {
            RPCError::Timeout(t) => {
                assert_eq!(
                    (t.id, t.target, t.timeout),
                    (1, 2, Duration::from_millis(100))
                )
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        let too_large = || RpcError::FrameTooLarge { size: 20, max: 10 };
        assert!(matches!(
            map(RPCTypes::AppendEntries, too_large()),
            RPCError::PayloadTooLarge(_)
        ));
        assert!(matches!(
            map(RPCTypes::Vote, too_large()),
            RPCError::Network(_)
        ));
        assert!(matches!(
            map(RPCTypes::Vote, RpcError::Decode("bad".into())),
            RPCError::Network(_)
        ));
        // The pool reconnects on the next call: retrying at once is what reaches a restarted
        // member before its election timer fires.
        assert!(matches!(
            map(RPCTypes::AppendEntries, RpcError::Closed("reset".into())),
            RPCError::Network(_)
        ));
    }

    #[tokio::test]
    async fn peer_addresses_resolve_literally_or_fail_clearly() {
        assert_eq!(
            resolve_peer("127.0.0.1:7400").await.ok(),
            Some("127.0.0.1:7400".parse().expect("literal"))
        );
        assert!(matches!(
            resolve_peer("not an address").await,
            Err(RpcError::Connect(_))
        ));
    }
}
