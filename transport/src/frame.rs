//! Length-prefixed frames: a u32 big-endian length, then that many payload bytes.

use std::time::Duration;

use quinn::{RecvStream, SendStream};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::RpcError;
use crate::metrics;
use crate::wire::{code_for, decode, encode};

const HEADER_LEN: usize = 4;
const PREALLOCATE_LIMIT: usize = 64 * 1024;
/// Frames up to this size are copied into one buffer and written at once.
const COALESCE_LIMIT: usize = 64 * 1024;

pub(crate) async fn write_frame(
    send: &mut SendStream,
    payload: &[u8],
    max: usize,
) -> Result<(), RpcError> {
    if payload.len() > max {
        return Err(RpcError::FrameTooLarge {
            size: payload.len(),
            max,
        });
    }
    let len = u32::try_from(payload.len()).map_err(|_| RpcError::FrameTooLarge {
        size: payload.len(),
        max,
    })?;
    let closed = |e: quinn::WriteError| RpcError::Closed(format!("write failed: {e}"));
    if payload.len() <= COALESCE_LIMIT {
        // One write: two would let the connection driver send the header alone in a packet
        // of its own before the payload is written.
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(payload);
        return send.write_all(&frame).await.map_err(closed);
    }
    send.write_all(&len.to_be_bytes()).await.map_err(closed)?;
    send.write_all(payload).await.map_err(closed)
}

/// Reads one frame; `Ok(None)` when the peer finished the stream on a frame boundary.
pub(crate) async fn read_frame(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<Vec<u8>>, RpcError> {
    FrameReader::default().next(recv, max).await
}

/// A frame being read. Progress lives here, not in the future, so that a read dropped midway
/// (a `select!` that picked another branch, a timeout) loses no bytes: the next call goes on
/// where it stopped. Only `read_chunk`, which is cancel-safe, touches the stream.
#[derive(Default)]
struct FrameReader {
    header: [u8; HEADER_LEN],
    header_filled: usize,
    /// Set once the header is complete: the payload's announced length.
    len: Option<usize>,
    payload: Vec<u8>,
}

impl FrameReader {
    async fn next(
        &mut self,
        recv: &mut RecvStream,
        max: usize,
    ) -> Result<Option<Vec<u8>>, RpcError> {
        let closed = |e: quinn::ReadError| RpcError::Closed(format!("read failed: {e}"));
        let len = loop {
            if let Some(len) = self.len {
                break len;
            }
            match recv
                .read_chunk(HEADER_LEN - self.header_filled, true)
                .await
                .map_err(closed)?
            {
                Some(chunk) => {
                    let end = self.header_filled + chunk.bytes.len();
                    self.header[self.header_filled..end].copy_from_slice(&chunk.bytes);
                    self.header_filled = end;
                    if end == HEADER_LEN {
                        let len = u32::from_be_bytes(self.header) as usize;
                        if len > max {
                            return Err(RpcError::FrameTooLarge { size: len, max });
                        }
                        // Grows with the bytes that actually arrive, so a peer announcing a
                        // large frame and sending nothing cannot make us allocate that much.
                        self.payload = Vec::with_capacity(len.min(PREALLOCATE_LIMIT));
                        self.len = Some(len);
                    }
                }
                None if self.header_filled == 0 => return Ok(None),
                None => {
                    return Err(RpcError::Decode(format!(
                        "truncated frame header: {} of {HEADER_LEN} bytes",
                        self.header_filled
                    )))
                }
            }
        };
        while self.payload.len() < len {
            match recv
                .read_chunk(len - self.payload.len(), true)
                .await
                .map_err(closed)?
            {
                Some(chunk) => self.payload.extend_from_slice(&chunk.bytes),
                None => {
                    return Err(RpcError::Decode(format!(
                        "truncated frame: {} of {len} bytes",
                        self.payload.len()
                    )))
                }
            }
        }
        let payload = std::mem::take(&mut self.payload);
        *self = FrameReader::default();
        Ok(Some(payload))
    }
}

/// Sending half of a raw framed stream. Every send has a deadline (`frame_timeout`).
pub struct FramedSend {
    send: SendStream,
    max_frame_bytes: usize,
    frame_timeout: Duration,
    peer_label: String,
}

impl std::fmt::Debug for FramedSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedSend")
            .field("peer", &self.peer_label)
            .finish_non_exhaustive()
    }
}

impl FramedSend {
    pub(crate) fn new(
        send: SendStream,
        max_frame_bytes: usize,
        frame_timeout: Duration,
        peer_label: String,
    ) -> Self {
        FramedSend {
            send,
            max_frame_bytes,
            frame_timeout,
            peer_label,
        }
    }

    /// Changes the deadline of each following send (default: the endpoint's `rpc_timeout`).
    pub fn set_frame_timeout(&mut self, timeout: Duration) {
        self.frame_timeout = timeout;
    }

    /// Sends `value` as one postcard frame.
    pub async fn send<T: Serialize>(&mut self, value: &T) -> Result<(), RpcError> {
        self.send_bytes(&encode(value)?).await
    }

    /// Sends `bytes` as one frame (at most `max_frame_bytes`).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), RpcError> {
        let max = self.max_frame_bytes;
        tokio::time::timeout(self.frame_timeout, write_frame(&mut self.send, bytes, max))
            .await
            .map_err(|_| RpcError::Timeout)??;
        metrics::bytes_sent(&self.peer_label, bytes.len() + HEADER_LEN);
        Ok(())
    }

    /// Ends the stream and waits (up to the frame deadline) until the peer has received
    /// everything, so a completed `finish` means the data arrived.
    pub async fn finish(mut self) -> Result<(), RpcError> {
        self.send
            .finish()
            .map_err(|e| RpcError::Closed(e.to_string()))?;
        match tokio::time::timeout(self.frame_timeout, self.send.stopped()).await {
            Err(_) => Err(RpcError::Timeout),
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(code))) => Err(RpcError::Closed(format!(
                "peer stopped the stream with code {code}"
            ))),
            Ok(Err(e)) => Err(RpcError::Closed(e.to_string())),
        }
    }
}

/// Receiving half of a raw framed stream. A frame that is too large, truncated or
/// undecodable stops the stream with an error code.
pub struct FramedRecv {
    recv: RecvStream,
    /// The frame in progress: receives may be cancelled (they often race other events).
    reader: FrameReader,
    max_frame_bytes: usize,
    frame_timeout: Duration,
    peer_label: String,
}

impl std::fmt::Debug for FramedRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedRecv")
            .field("peer", &self.peer_label)
            .finish_non_exhaustive()
    }
}

impl FramedRecv {
    pub(crate) fn new(
        recv: RecvStream,
        max_frame_bytes: usize,
        frame_timeout: Duration,
        peer_label: String,
    ) -> Self {
        FramedRecv {
            recv,
            reader: FrameReader::default(),
            max_frame_bytes,
            frame_timeout,
            peer_label,
        }
    }

    /// Changes the deadline of each following receive (default: the endpoint's `rpc_timeout`).
    pub fn set_frame_timeout(&mut self, timeout: Duration) {
        self.frame_timeout = timeout;
    }

    /// Next frame decoded as `T`; `Ok(None)` once the peer finished the stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, RpcError> {
        let Some(bytes) = self.recv_bytes().await? else {
            return Ok(None);
        };
        decode(&bytes).map(Some).map_err(|e| self.fail(e))
    }

    /// Next frame's raw bytes; `Ok(None)` once the peer finished the stream.
    pub async fn recv_bytes(&mut self) -> Result<Option<Vec<u8>>, RpcError> {
        let max = self.max_frame_bytes;
        let frame = tokio::time::timeout(self.frame_timeout, self.reader.next(&mut self.recv, max))
            .await
            .map_err(|_| RpcError::Timeout)
            .and_then(|read| read)
            .map_err(|e| self.fail(e))?;
        if let Some(bytes) = &frame {
            metrics::bytes_received(&self.peer_label, bytes.len() + HEADER_LEN);
        }
        Ok(frame)
    }

    fn fail(&mut self, err: RpcError) -> RpcError {
        // Already-closed streams cannot be stopped again; nothing more to do then.
        let _ = self.recv.stop(code_for(&err));
        err
    }
}
