//! The accepting side: handshakes, authorization by ALPN and certificate, stream dispatch.

use std::sync::Arc;

use quinn::{RecvStream, SendStream};
use serde::Serialize;

use crate::error::RpcError;
use crate::frame::{read_frame, write_frame, FramedRecv, FramedSend};
use crate::method::PeerInfo;
use crate::metrics::{self, Direction};
use crate::tls::{JOIN_ALPN, MEMBER_ALPN};
use crate::wire::{close, code_for, decode, encode, StreamOpen};

use super::handlers::{Lookup, RpcHandler};
use super::probe::probe_pooled;
use super::session::SERVER_IDLE_LIMIT;
use super::{peer_node_id, read_datagrams, Shared, JOIN_MAX_FRAME_BYTES};

pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(shared.clone(), incoming));
    }
    tracing::debug!("endpoint closed; accept loop ends");
}

fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

async fn serve_connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let addr = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "incoming connection failed");
            return;
        }
    };
    let conn = match tokio::time::timeout(shared.cfg.connect_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::info!(%addr, error = %e, "handshake refused");
            return;
        }
        Err(_) => {
            tracing::info!(%addr, "handshake timed out");
            return;
        }
    };
    let join = match negotiated_alpn(&conn).as_deref() {
        Some(MEMBER_ALPN) => false,
        Some(JOIN_ALPN) => true,
        _ => {
            conn.close(close::NOT_AUTHORIZED, b"unknown application protocol");
            return;
        }
    };
    let node_id = if join {
        None
    } else {
        match peer_node_id(&conn) {
            Some(id) => Some(id),
            None => {
                tracing::warn!(%addr, "member connection without a cluster certificate refused");
                conn.close(
                    close::NOT_AUTHORIZED,
                    b"cluster client certificate required",
                );
                return;
            }
        }
    };
    let peer = PeerInfo { node_id, addr };
    tracing::debug!(?peer, join, "connection accepted");
    metrics::track_connection(&conn);
    if !join {
        tokio::spawn(read_datagrams(
            conn.clone(),
            peer.clone(),
            shared.datagram_tx.clone(),
        ));
        tokio::spawn(probe_pooled(shared.clone(), addr));
    }
    // Ends when the connection closes (peer close, idle timeout or endpoint close).
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve_stream(shared.clone(), peer.clone(), join, send, recv));
    }
}

struct StreamCtx {
    shared: Arc<Shared>,
    peer: PeerInfo,
    label: String,
    max_frame_bytes: usize,
}

async fn serve_stream(
    shared: Arc<Shared>,
    peer: PeerInfo,
    join: bool,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    metrics::stream_opened(Direction::Inbound);
    let max_frame_bytes = if join {
        shared.cfg.max_frame_bytes.min(JOIN_MAX_FRAME_BYTES)
    } else {
        shared.cfg.max_frame_bytes
    };
    let ctx = StreamCtx {
        label: peer.label(),
        peer,
        shared,
        max_frame_bytes,
    };
    let opening = match read_opening(&ctx, &mut recv).await {
        Ok(opening) => opening,
        Err(err) => return refuse(&ctx, send, recv, err).await,
    };
    match opening {
        StreamOpen::Rpc { method, payload } => {
            let result = run_rpc(&ctx, &method, join, payload).await;
            if let Err(err) = &result {
                tracing::debug!(peer = %ctx.label, %method, error = %err, "RPC failed");
                if matches!(err, RpcError::Decode(_)) {
                    let _ = recv.stop(code_for(err));
                }
            }
            let _ = respond(&ctx, &mut send, &result).await;
        }
        StreamOpen::Session { method } => serve_session(&ctx, &method, join, send, recv).await,
        StreamOpen::Stream { name } => {
            let handler = if join {
                Err(RpcError::NotAuthorized(
                    "raw streams are not available to joining nodes".into(),
                ))
            } else {
                ctx.shared
                    .handlers
                    .stream(&name)
                    .ok_or(RpcError::UnknownMethod(name))
            };
            let handler = match handler {
                Ok(handler) => handler,
                Err(err) => return refuse(&ctx, send, recv, err).await,
            };
            // The stream stays open: the handler owns it from here on.
            if write_response(&ctx, &mut send, &Ok::<(), RpcError>(()))
                .await
                .is_err()
            {
                return;
            }
            let timeout = ctx.shared.cfg.rpc_timeout;
            let send = FramedSend::new(send, ctx.max_frame_bytes, timeout, ctx.label.clone());
            let recv = FramedRecv::new(recv, ctx.max_frame_bytes, timeout, ctx.label.clone());
            handler(ctx.peer, send, recv).await;
        }
    }
}

async fn read_opening(ctx: &StreamCtx, recv: &mut RecvStream) -> Result<StreamOpen, RpcError> {
    let frame = tokio::time::timeout(
        ctx.shared.cfg.rpc_timeout,
        read_frame(recv, ctx.max_frame_bytes),
    )
    .await
    .map_err(|_| RpcError::Timeout)??
    .ok_or_else(|| RpcError::Protocol("stream finished before its opening frame".into()))?;
    metrics::bytes_received(&ctx.label, frame.len() + 4);
    decode(&frame)
}

fn rpc_handler(ctx: &StreamCtx, method: &str, join: bool) -> Result<RpcHandler, RpcError> {
    match ctx.shared.handlers.rpc(method, join) {
        Lookup::Found(handler) => Ok(handler),
        Lookup::Unknown => Err(RpcError::UnknownMethod(method.to_string())),
        Lookup::MembersOnly => Err(RpcError::NotAuthorized(format!(
            "method {method} is not available to joining nodes"
        ))),
    }
}

async fn run_handler(
    ctx: &StreamCtx,
    handler: &RpcHandler,
    payload: Vec<u8>,
) -> Result<Vec<u8>, RpcError> {
    tokio::time::timeout(
        ctx.shared.cfg.rpc_timeout,
        handler(ctx.peer.clone(), payload),
    )
    .await
    .unwrap_or(Err(RpcError::Timeout))
}

async fn run_rpc(
    ctx: &StreamCtx,
    method: &str,
    join: bool,
    payload: Vec<u8>,
) -> Result<Vec<u8>, RpcError> {
    let handler = rpc_handler(ctx, method, join)?;
    run_handler(ctx, &handler, payload).await
}

/// Answers the calls of one session in order until the caller finishes it, it stays idle
/// past [`SERVER_IDLE_LIMIT`], or a frame is bad (then it ends like a bad one-off call).
async fn serve_session(
    ctx: &StreamCtx,
    method: &str,
    join: bool,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let handler = match rpc_handler(ctx, method, join) {
        Ok(handler) => handler,
        Err(err) => return refuse(ctx, send, recv, err).await,
    };
    loop {
        let next = tokio::time::timeout(
            SERVER_IDLE_LIMIT,
            read_frame(&mut recv, ctx.max_frame_bytes),
        )
        .await;
        let request = match next {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) => {
                let _ = send.finish();
                return;
            }
            Ok(Err(err)) => return refuse(ctx, send, recv, err).await,
            Err(_) => return refuse(ctx, send, recv, RpcError::Timeout).await,
        };
        metrics::bytes_received(&ctx.label, request.len() + 4);
        let result = run_handler(ctx, &handler, request).await;
        if let Err(err) = &result {
            tracing::debug!(peer = %ctx.label, %method, error = %err, "RPC in a session failed");
        }
        if write_response(ctx, &mut send, &result).await.is_err() {
            return;
        }
    }
}

/// Writes the one response frame (with a deadline) and finishes the stream.
async fn respond<T: Serialize>(
    ctx: &StreamCtx,
    send: &mut SendStream,
    result: &Result<T, RpcError>,
) -> Result<(), RpcError> {
    write_response(ctx, send, result).await?;
    send.finish().map_err(|e| RpcError::Closed(e.to_string()))
}

/// Writes one response frame (with a deadline); a response over the frame limit is
/// replaced by a `FrameTooLarge` error.
async fn write_response<T: Serialize>(
    ctx: &StreamCtx,
    send: &mut SendStream,
    result: &Result<T, RpcError>,
) -> Result<(), RpcError> {
    let mut frame = encode(result)?;
    if frame.len() > ctx.max_frame_bytes {
        let too_large = RpcError::FrameTooLarge {
            size: frame.len(),
            max: ctx.max_frame_bytes,
        };
        tracing::warn!(peer = %ctx.label, error = %too_large, "response too large");
        frame = encode(&Err::<(), RpcError>(too_large))?;
    }
    tokio::time::timeout(
        ctx.shared.cfg.rpc_timeout,
        write_frame(send, &frame, ctx.max_frame_bytes),
    )
    .await
    .map_err(|_| RpcError::Timeout)??;
    metrics::bytes_sent(&ctx.label, frame.len() + 4);
    Ok(())
}

/// Closes a stream whose opening was bad or refused: stops reading with an error code and
/// tells the caller why. Only this stream is affected.
async fn refuse(ctx: &StreamCtx, mut send: SendStream, mut recv: RecvStream, err: RpcError) {
    tracing::debug!(peer = %ctx.label, error = %err, "stream refused");
    let _ = recv.stop(code_for(&err));
    if respond(ctx, &mut send, &Err::<(), RpcError>(err.clone()))
        .await
        .is_err()
    {
        let _ = send.reset(code_for(&err));
    }
}
