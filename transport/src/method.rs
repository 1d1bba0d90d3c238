use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A typed RPC method; requests and responses travel as postcard.
pub trait Method: 'static {
    /// Wire name; unique per endpoint.
    const NAME: &'static str;
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Node id from the peer's cluster certificate; `None` on join connections.
    pub node_id: Option<u64>,
    pub addr: SocketAddr,
}

impl PeerInfo {
    /// Metric label: the node id when known, else the address.
    pub(crate) fn label(&self) -> String {
        match self.node_id {
            Some(id) => id.to_string(),
            None => self.addr.to_string(),
        }
    }
}
