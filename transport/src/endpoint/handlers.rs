//! Registered RPC and stream handlers, type-erased.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::RwLock;

use crate::error::RpcError;
use crate::frame::{FramedRecv, FramedSend};
use crate::method::{Method, PeerInfo};
use crate::wire::{decode, encode};

pub(crate) type RpcHandler =
    Arc<dyn Fn(PeerInfo, Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RpcError>> + Send + Sync>;
pub(crate) type StreamHandler =
    Arc<dyn Fn(PeerInfo, FramedSend, FramedRecv) -> BoxFuture<'static, ()> + Send + Sync>;

struct RpcEntry {
    handler: RpcHandler,
    /// Reachable from join connections (clients without a cluster certificate).
    join: bool,
}

/// Outcome of looking a method up for a connection.
pub(crate) enum Lookup {
    Found(RpcHandler),
    Unknown,
    MembersOnly,
}

#[derive(Default)]
pub(crate) struct Handlers {
    rpc: RwLock<HashMap<&'static str, RpcEntry>>,
    streams: RwLock<HashMap<&'static str, StreamHandler>>,
}

impl Handlers {
    pub(crate) fn add_rpc<M, F, Fut>(&self, handler: F, join: bool)
    where
        M: Method,
        F: Fn(PeerInfo, M::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M::Response, RpcError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: RpcHandler = Arc::new(move |peer, payload| {
            let handler = handler.clone();
            Box::pin(async move {
                let request: M::Request = decode(&payload)
                    .map_err(|e| RpcError::Decode(format!("request of {}: {e}", M::NAME)))?;
                let response = handler(peer, request).await?;
                encode(&response)
            })
        });
        let previous = self.rpc.write().insert(
            M::NAME,
            RpcEntry {
                handler: erased,
                join,
            },
        );
        if previous.is_some() {
            tracing::warn!(
                method = M::NAME,
                "RPC handler registered twice; the last one wins"
            );
        }
    }

    pub(crate) fn add_stream<F, Fut>(&self, name: &'static str, handler: F)
    where
        F: Fn(PeerInfo, FramedSend, FramedRecv) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let erased: StreamHandler =
            Arc::new(move |peer, send, recv| Box::pin(handler(peer, send, recv)));
        if self.streams.write().insert(name, erased).is_some() {
            tracing::warn!(
                stream = name,
                "stream handler registered twice; the last one wins"
            );
        }
    }

    pub(crate) fn rpc(&self, method: &str, join_connection: bool) -> Lookup {
        match self.rpc.read().get(method) {
            None => Lookup::Unknown,
            Some(entry) if join_connection && !entry.join => Lookup::MembersOnly,
            Some(entry) => Lookup::Found(entry.handler.clone()),
        }
    }

    pub(crate) fn stream(&self, name: &str) -> Option<StreamHandler> {
        self.streams.read().get(name).cloned()
    }
}
