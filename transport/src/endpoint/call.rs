//! The client side of one RPC on an established connection.

use crate::error::RpcError;
use crate::frame::{read_frame, write_frame};
use crate::metrics::{self, Direction};
use crate::wire::{code, decode, encode, StreamOpen};

/// Sends one request on a new stream of `conn` and reads the response. No deadline of its
/// own: callers wrap it in theirs.
pub(crate) async fn call_on(
    conn: &quinn::Connection,
    method: &str,
    payload: Vec<u8>,
    max_frame_bytes: usize,
    peer_label: &str,
) -> Result<Vec<u8>, RpcError> {
    let request = encode(&StreamOpen::Rpc {
        method: method.to_string(),
        payload,
    })?;
    if request.len() > max_frame_bytes {
        return Err(RpcError::FrameTooLarge {
            size: request.len(),
            max: max_frame_bytes,
        });
    }
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| RpcError::Closed(format!("cannot open stream: {e}")))?;
    metrics::stream_opened(Direction::Outbound);
    let written = write_frame(&mut send, &request, max_frame_bytes).await;
    if written.is_ok() {
        metrics::bytes_sent(peer_label, request.len() + 4);
        // Finishing an already-reset stream fails harmlessly; the response read reports why.
        let _ = send.finish();
    }
    read_response(&mut recv, written, max_frame_bytes, peer_label).await
}

/// Reads the one response frame to a request whose write ended as `written`. Even when the
/// write failed (the server stopped our stream) the server may have answered with an error
/// frame that says why; that is preferred over the bare write error.
pub(crate) async fn read_response(
    recv: &mut quinn::RecvStream,
    written: Result<(), RpcError>,
    max_frame_bytes: usize,
    peer_label: &str,
) -> Result<Vec<u8>, RpcError> {
    let response = match read_frame(recv, max_frame_bytes).await {
        Ok(Some(frame)) => frame,
        Ok(None) => {
            return Err(written.err().unwrap_or_else(|| {
                RpcError::Closed("peer closed the stream without a response".into())
            }))
        }
        Err(read_error) => {
            let _ = recv.stop(code::CANCELLED);
            return Err(written.err().unwrap_or(read_error));
        }
    };
    metrics::bytes_received(peer_label, response.len() + 4);
    decode::<Result<Vec<u8>, RpcError>>(&response)?
}
