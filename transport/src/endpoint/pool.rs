//! One pooled connection per peer address, re-established when it has closed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::RpcError;
use crate::method::PeerInfo;
use crate::pki::names::CLUSTER_DNS_NAME;

use super::peer_node_id;

type Slot = Arc<tokio::sync::Mutex<Option<(quinn::Connection, PeerInfo)>>>;

pub(crate) struct Pool {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    connect_timeout: Duration,
    slots: parking_lot::Mutex<HashMap<SocketAddr, Slot>>,
    /// `stable_id`s of connections being probed (see `probe.rs`).
    probing: parking_lot::Mutex<HashSet<usize>>,
}

/// A connection from the pool; `fresh` when it was just established.
pub(crate) struct Pooled {
    pub(crate) conn: quinn::Connection,
    pub(crate) peer: PeerInfo,
    pub(crate) fresh: bool,
}

impl Pool {
    pub(crate) fn new(
        endpoint: quinn::Endpoint,
        client_config: quinn::ClientConfig,
        connect_timeout: Duration,
    ) -> Self {
        Pool {
            endpoint,
            client_config,
            connect_timeout,
            slots: parking_lot::Mutex::new(HashMap::new()),
            probing: parking_lot::Mutex::new(HashSet::new()),
        }
    }

    /// The open connection to `addr`, connecting if there is none. Concurrent callers for
    /// the same address share one handshake.
    pub(crate) async fn get(&self, addr: SocketAddr) -> Result<Pooled, RpcError> {
        let slot = self.slots.lock().entry(addr).or_default().clone();
        let mut guard = slot.lock().await;
        if let Some((conn, peer)) = guard.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(Pooled {
                    conn: conn.clone(),
                    peer: peer.clone(),
                    fresh: false,
                });
            }
            tracing::debug!(%addr, "pooled connection closed; reconnecting");
        }
        *guard = None;
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, CLUSTER_DNS_NAME)
            .map_err(|e| RpcError::Connect(format!("{addr}: {e}")))?;
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| {
                RpcError::Connect(format!(
                    "{addr}: no handshake within {:?}",
                    self.connect_timeout
                ))
            })?
            .map_err(|e| RpcError::Connect(format!("{addr}: {e}")))?;
        let peer = PeerInfo {
            node_id: peer_node_id(&conn),
            addr,
        };
        *guard = Some((conn.clone(), peer.clone()));
        Ok(Pooled {
            conn,
            peer,
            fresh: true,
        })
    }

    /// The pooled connection to `addr` if one is open; never connects.
    pub(crate) async fn open_connection(
        &self,
        addr: SocketAddr,
    ) -> Option<(quinn::Connection, PeerInfo)> {
        let slot = self.slots.lock().get(&addr)?.clone();
        let guard = slot.lock().await;
        let (conn, peer) = guard.as_ref()?;
        conn.close_reason()
            .is_none()
            .then(|| (conn.clone(), peer.clone()))
    }

    /// False when a probe of connection `id` is already running.
    pub(crate) fn begin_probe(&self, id: usize) -> bool {
        self.probing.lock().insert(id)
    }

    pub(crate) fn end_probe(&self, id: usize) {
        self.probing.lock().remove(&id);
    }

    pub(crate) fn clear(&self) {
        self.slots.lock().clear();
    }
}
