//! The QUIC endpoint: serves registered methods and streams, calls peers through a pool.

mod call;
mod handlers;
mod pool;
mod probe;
mod server;
mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;

use crate::config::TransportConfig;
use crate::error::{RpcError, TransportError};
use crate::frame::{read_frame, write_frame, FramedRecv, FramedSend};
use crate::method::{Method, PeerInfo};
use crate::metrics::{self, Direction};
use crate::pki::names::node_id_of_der;
use crate::pki::NodeIdentity;
use crate::tls;
use crate::wire::{close, decode, encode, StreamOpen};

pub(crate) use call::call_on;
use handlers::Handlers;
use pool::Pool;
use probe::spawn_probe;
#[cfg(test)]
pub(crate) use session::CLIENT_IDLE_LIMIT;
use session::{call_in_session, Sessions};

/// Frame limit on join connections: a joiner is not yet trusted with large allocations.
pub(crate) const JOIN_MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Datagrams buffered for [`Endpoint::datagrams`]; newer ones are dropped when it is full.
const DATAGRAM_QUEUE: usize = 4096;

/// State the background tasks (accept loop, stream servers) share with the handle.
pub(crate) struct Shared {
    pub(crate) cfg: TransportConfig,
    pub(crate) handlers: Handlers,
    pub(crate) datagram_tx: mpsc::Sender<(PeerInfo, Bytes)>,
    /// Outgoing connections; the accepting side checks them when a peer connects anew.
    pub(crate) pool: Pool,
    /// Idle RPC sessions on the pooled connections.
    pub(crate) sessions: Sessions,
}

struct Inner {
    quic: quinn::Endpoint,
    shared: Arc<Shared>,
    node_id: u64,
    local_addr: SocketAddr,
    datagrams: parking_lot::Mutex<Option<mpsc::Receiver<(PeerInfo, Bytes)>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.quic.close(close::SHUTDOWN, b"endpoint dropped");
    }
}

/// A node's QUIC endpoint. Cheap to clone; the endpoint closes when the last clone is
/// dropped or on [`Endpoint::close`].
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("node_id", &self.inner.node_id)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

/// Node id named by the (already CA-verified) certificate the peer presented.
pub(crate) fn peer_node_id(conn: &quinn::Connection) -> Option<u64> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    node_id_of_der(certs.first()?).ok()
}

/// Forwards a member connection's datagrams to the endpoint's queue until it closes.
pub(crate) async fn read_datagrams(
    conn: quinn::Connection,
    peer: PeerInfo,
    queue: mpsc::Sender<(PeerInfo, Bytes)>,
) {
    let label = peer.label();
    while let Ok(datagram) = conn.read_datagram().await {
        metrics::bytes_received(&label, datagram.len());
        if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send((peer.clone(), datagram)) {
            metrics::datagram_dropped();
        }
    }
}

fn bind_error(addr: SocketAddr) -> impl FnOnce(std::io::Error) -> TransportError {
    move |source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            TransportError::AddrInUse(addr)
        } else {
            TransportError::Bind { addr, source }
        }
    }
}

/// The key for stateless-reset tokens, derived from the node's private key so it survives a
/// restart: a peer killed and restarted on the same address answers packets of its previous
/// incarnation's connections with a valid reset, and the other side drops the dead connection
/// at once instead of waiting out the idle timeout (which stalled elections after restarts).
fn stateless_reset_key(identity: &NodeIdentity) -> Arc<dyn quinn::crypto::HmacKey> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"stator/quic-stateless-reset/v1");
    h.update(&identity.key_der);
    Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &h.finalize()))
}

/// Opens a stream on `conn` and writes its opening frame.
pub(crate) async fn open_with(
    conn: &quinn::Connection,
    opening: &StreamOpen,
    max_frame_bytes: usize,
    peer_label: &str,
) -> Result<(quinn::SendStream, quinn::RecvStream), RpcError> {
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| RpcError::Closed(format!("cannot open stream: {e}")))?;
    metrics::stream_opened(Direction::Outbound);
    let opening = encode(opening)?;
    write_frame(&mut send, &opening, max_frame_bytes).await?;
    metrics::bytes_sent(peer_label, opening.len() + 4);
    Ok((send, recv))
}

/// Closes a pooled connection whose peer stayed silent through a probe (see `probe.rs`).
pub(crate) fn close_unresponsive(conn: &quinn::Connection, addr: SocketAddr) {
    tracing::debug!(%addr, "peer silent through a probe; closing the connection");
    metrics::connection_unresponsive();
    conn.close(close::UNRESPONSIVE, b"peer unresponsive");
}

impl Endpoint {
    /// Binds `listen` (UDP) and starts serving. Must be called inside a tokio runtime.
    pub fn bind(
        listen: SocketAddr,
        identity: NodeIdentity,
        cfg: TransportConfig,
    ) -> Result<Self, TransportError> {
        cfg.validate()?;
        tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let socket = std::net::UdpSocket::bind(listen).map_err(bind_error(listen))?;
        socket.set_nonblocking(true).map_err(bind_error(listen))?;
        let quic_transport = Arc::new(cfg.quic()?);
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls::server_config(&identity)?));
        server.transport_config(quic_transport.clone());
        let mut client = quinn::ClientConfig::new(Arc::new(tls::member_client_config(&identity)?));
        client.transport_config(quic_transport);
        let quic = quinn::Endpoint::new(
            quinn::EndpointConfig::new(stateless_reset_key(&identity)),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error(listen))?;
        let local_addr = quic.local_addr().map_err(bind_error(listen))?;
        let (datagram_tx, datagram_rx) = mpsc::channel(DATAGRAM_QUEUE);
        let pool = Pool::new(quic.clone(), client, cfg.connect_timeout);
        let shared = Arc::new(Shared {
            cfg,
            handlers: Handlers::default(),
            datagram_tx,
            pool,
            sessions: Sessions::default(),
        });
        tokio::spawn(server::accept_loop(quic.clone(), shared.clone()));
        tracing::info!(%local_addr, node_id = identity.node_id, "transport endpoint listening");
        Ok(Endpoint {
            inner: Arc::new(Inner {
                quic,
                shared,
                node_id: identity.node_id,
                local_addr,
                datagrams: parking_lot::Mutex::new(Some(datagram_rx)),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    fn cfg(&self) -> &TransportConfig {
        &self.inner.shared.cfg
    }

    /// Serves `M` to cluster members (connections with a valid cluster client certificate).
    pub fn register<M: Method, F, Fut>(&self, handler: F)
    where
        F: Fn(PeerInfo, M::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M::Response, RpcError>> + Send + 'static,
    {
        self.inner
            .shared
            .handlers
            .add_rpc::<M, F, Fut>(handler, false);
    }

    /// Serves `M` to members and also to joining clients without a certificate. Only methods
    /// registered here are reachable on join connections; `PeerInfo::node_id` is `None` there.
    pub fn register_join<M: Method, F, Fut>(&self, handler: F)
    where
        F: Fn(PeerInfo, M::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M::Response, RpcError>> + Send + 'static,
    {
        self.inner
            .shared
            .handlers
            .add_rpc::<M, F, Fut>(handler, true);
    }

    /// Serves raw framed streams named `name` to members. Each frame the handler sends or
    /// receives has the endpoint's `rpc_timeout` as deadline (adjustable on the halves).
    pub fn register_stream<F, Fut>(&self, name: &'static str, handler: F)
    where
        F: Fn(PeerInfo, FramedSend, FramedRecv) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inner.shared.handlers.add_stream(name, handler);
    }

    /// Calls `M` on the peer at `addr` with the default deadline (`rpc_timeout`).
    pub async fn call<M: Method>(
        &self,
        addr: SocketAddr,
        req: &M::Request,
    ) -> Result<M::Response, RpcError> {
        self.call_timeout::<M>(addr, req, self.cfg().rpc_timeout)
            .await
    }

    /// Calls `M` on the peer at `addr`; `timeout` bounds everything (connect included).
    pub async fn call_timeout<M: Method>(
        &self,
        addr: SocketAddr,
        req: &M::Request,
        timeout: Duration,
    ) -> Result<M::Response, RpcError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let result = self.call_until::<M>(addr, req, deadline).await;
        metrics::rpc_finished(M::NAME, started.elapsed(), result.as_ref().map(|_| ()));
        result
    }

    async fn call_until<M: Method>(
        &self,
        addr: SocketAddr,
        req: &M::Request,
        deadline: tokio::time::Instant,
    ) -> Result<M::Response, RpcError> {
        let payload = encode(req)?;
        let (conn, peer) = tokio::time::timeout_at(deadline, self.connection(addr))
            .await
            .map_err(|_| RpcError::Timeout)??;
        let heard_before = conn.stats().udp_rx.datagrams;
        let label = peer.label();
        let call = call_in_session(
            &self.inner.shared.sessions,
            &conn,
            addr,
            M::NAME,
            &payload,
            self.cfg().max_frame_bytes,
            &label,
        );
        match tokio::time::timeout_at(deadline, call).await {
            Ok(response) => decode(&response?),
            Err(_) => {
                if conn.stats().udp_rx.datagrams == heard_before {
                    spawn_probe(self.inner.shared.clone(), conn, peer);
                }
                Err(RpcError::Timeout)
            }
        }
    }

    /// Opens a raw framed stream to the `name` handler of the peer at `addr`. Opening has
    /// the `rpc_timeout` deadline; each frame then has its own (see [`FramedSend`]).
    pub async fn open_stream(
        &self,
        addr: SocketAddr,
        name: &str,
    ) -> Result<(FramedSend, FramedRecv), RpcError> {
        tokio::time::timeout(self.cfg().rpc_timeout, self.open_stream_untimed(addr, name))
            .await
            .unwrap_or(Err(RpcError::Timeout))
    }

    async fn open_stream_untimed(
        &self,
        addr: SocketAddr,
        name: &str,
    ) -> Result<(FramedSend, FramedRecv), RpcError> {
        let max = self.cfg().max_frame_bytes;
        let (conn, peer) = self.connection(addr).await?;
        let label = peer.label();
        let opening = StreamOpen::Stream {
            name: name.to_string(),
        };
        let (send, mut recv) = open_with(&conn, &opening, max, &label).await?;
        let ack = read_frame(&mut recv, max)
            .await?
            .ok_or_else(|| RpcError::Closed("peer closed the stream before accepting it".into()))?;
        metrics::bytes_received(&label, ack.len() + 4);
        decode::<Result<(), RpcError>>(&ack)??;
        let timeout = self.cfg().rpc_timeout;
        Ok((
            FramedSend::new(send, max, timeout, label.clone()),
            FramedRecv::new(recv, max, timeout, label),
        ))
    }

    /// Sends an unreliable datagram (heartbeats) to the peer at `addr`, connecting if needed
    /// (within `rpc_timeout`). Delivery is not confirmed.
    pub async fn send_datagram(&self, addr: SocketAddr, payload: Bytes) -> Result<(), RpcError> {
        let (conn, peer) = tokio::time::timeout(self.cfg().rpc_timeout, self.connection(addr))
            .await
            .map_err(|_| RpcError::Timeout)??;
        let size = payload.len();
        conn.send_datagram(payload).map_err(|e| match e {
            quinn::SendDatagramError::TooLarge => RpcError::FrameTooLarge {
                size,
                max: conn.max_datagram_size().unwrap_or(0),
            },
            other => RpcError::Closed(format!("datagram not sent: {other}")),
        })?;
        metrics::bytes_sent(&peer.label(), size);
        Ok(())
    }

    /// Datagrams from cluster members (never from join connections or strangers), from
    /// connections in either direction. The receiver can be taken once: later calls return
    /// a receiver that is already closed. When nobody drains it, new datagrams are dropped
    /// (`stator_transport_datagrams_dropped_total`).
    pub fn datagrams(&self) -> mpsc::Receiver<(PeerInfo, Bytes)> {
        match self.inner.datagrams.lock().take() {
            Some(receiver) => receiver,
            None => {
                tracing::warn!("Endpoint::datagrams called twice; the second receiver is closed");
                mpsc::channel(1).1
            }
        }
    }

    /// Closes all connections and stops serving; pending calls fail.
    pub fn close(&self) {
        self.inner.quic.close(close::SHUTDOWN, b"endpoint closed");
        self.inner.shared.pool.clear();
        self.inner.shared.sessions.clear();
    }

    /// (peer, method) pairs with idle RPC sessions kept, for tests.
    #[cfg(test)]
    pub(crate) fn idle_session_kinds(&self) -> usize {
        self.inner.shared.sessions.kept()
    }

    /// The pooled QUIC connection to `addr`, for tests that must put raw bytes on the wire.
    #[cfg(test)]
    pub(crate) async fn raw_connection(
        &self,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, RpcError> {
        Ok(self.connection(addr).await?.0)
    }

    /// The pooled connection to `addr`; a new one also gets its datagrams read and is counted.
    async fn connection(
        &self,
        addr: SocketAddr,
    ) -> Result<(quinn::Connection, PeerInfo), RpcError> {
        let pooled = self.inner.shared.pool.get(addr).await?;
        if pooled.fresh {
            metrics::track_connection(&pooled.conn);
            tokio::spawn(read_datagrams(
                pooled.conn.clone(),
                pooled.peer.clone(),
                self.inner.shared.datagram_tx.clone(),
            ));
        }
        Ok((pooled.conn, pooled.peer))
    }
}
