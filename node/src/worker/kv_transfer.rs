//! The decode worker's side of a KV transfer: pulls a prompt prefix's blocks from a prefill
//! worker over `worker.prefill` into a reservation, importing each chunk as it arrives.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stator_gpu::engine::{KvReservation, TransferError};
use stator_transport::{Endpoint, FramedRecv, RpcError};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::wire::{PrefillFrame, PrefillHeader, PrefillRefusal, PREFILL_STREAM};

/// Chunks received but not yet imported; more make the reader wait (and the sender, through
/// QUIC flow control).
const IMPORT_QUEUE: usize = 2;

/// Deadlines and sizes of KV transfers. The lead maps `--kv-transfer-timeout-ms` to `total`.
#[derive(Clone, Debug)]
pub struct KvTransferConfig {
    /// Opening the stream to the prefill worker (connection included).
    pub connect: Duration,
    /// From the request to the prefill worker's `Accepted`.
    pub accept: Duration,
    /// From `Accepted` to the first blocks: the prefill itself runs in this window.
    pub first_blocks: Duration,
    /// Between two frames once blocks flow.
    pub between_chunks: Duration,
    /// The whole transfer, connect to the last import.
    pub total: Duration,
    /// Upper bound on the bytes of one block frame (kept below the transport's frame limit).
    pub max_chunk_bytes: usize,
}

impl Default for KvTransferConfig {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            accept: Duration::from_secs(5),
            first_blocks: Duration::from_secs(30),
            // Many transfers share one connection under load, so a chunk can take seconds
            // without anything being wrong (a GPU run with 2 s here cancelled a third of them).
            // A dead prefill peer is caught sooner anyway: the pull stops when it is committed
            // Down (~300 ms).
            between_chunks: Duration::from_secs(10),
            total: Duration::from_secs(60),
            max_chunk_bytes: 4 * 1024 * 1024,
        }
    }
}

impl KvTransferConfig {
    /// Blocks per frame: as many whole blocks as fit in `max_chunk_bytes`, at least one.
    pub fn blocks_per_chunk(&self, bytes_per_block: usize) -> usize {
        (self.max_chunk_bytes / bytes_per_block.max(1)).max(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot reach the prefill worker: {0}")]
    Connect(RpcError),
    #[error("the prefill worker refused: {0}")]
    Refused(PrefillRefusal),
    #[error("the prefill worker went silent ({0})")]
    Stalled(&'static str),
    #[error("the transfer took longer than {0:?}")]
    TooSlow(Duration),
    #[error("the stream broke: {0}")]
    Broken(RpcError),
    #[error("the prefill worker broke the protocol: {0}")]
    Protocol(String),
    #[error("importing the blocks failed: {0}")]
    Import(TransferError),
}

impl PullError {
    /// The `reason` label of `stator_kv_transfer_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Refused(refusal) => refusal.reason(),
            Self::Stalled(_) => "stalled",
            Self::TooSlow(_) => "total_deadline",
            Self::Broken(_) => "broken",
            Self::Protocol(_) => "protocol",
            Self::Import(_) => "import",
        }
    }
}

/// A finished pull: its bytes and where its time went.
#[derive(Clone, Copy, Debug)]
pub struct PulledKv {
    pub bytes: u64,
    /// Request sent → first blocks: connecting, queueing and the prefill itself.
    pub until_first_blocks: Duration,
    /// First blocks → every block imported and published: the data movement.
    pub transfer: Duration,
}

/// Asks the prefill worker at `addr` for `header.tokens`' blocks `header.from_block..` and
/// imports them into `reservation` as they arrive, then completes it. Every wait has its
/// deadline; on error the caller drops the reservation (freeing
/// its blocks), and dropping the stream here makes the prefill worker cancel its sequence.
pub async fn pull_prefix(
    endpoint: &Endpoint,
    addr: SocketAddr,
    header: &PrefillHeader,
    reservation: &KvReservation,
    cfg: &KvTransferConfig,
) -> Result<PulledKv, PullError> {
    timeout(cfg.total, pull(endpoint, addr, header, reservation, cfg))
        .await
        .unwrap_or(Err(PullError::TooSlow(cfg.total)))
        .inspect(|pulled| {
            metrics::counter!("stator_kv_transfer_bytes_total", "direction" => "received")
                .increment(pulled.bytes);
            metrics::histogram!("stator_kv_transfer_seconds").record(pulled.transfer.as_secs_f64());
        })
}

async fn pull(
    endpoint: &Endpoint,
    addr: SocketAddr,
    header: &PrefillHeader,
    reservation: &KvReservation,
    cfg: &KvTransferConfig,
) -> Result<PulledKv, PullError> {
    let started = Instant::now();
    let (mut send, mut recv) = timeout(cfg.connect, endpoint.open_stream(addr, PREFILL_STREAM))
        .await
        .unwrap_or(Err(RpcError::Timeout))
        .map_err(PullError::Connect)?;
    send.send(header).await.map_err(PullError::Connect)?;
    let expected_first = reservation.first_block();
    let expected_count = reservation.blocks_needed();
    match next_frame(&mut recv, cfg.accept, "no answer to the request").await? {
        PrefillFrame::Accepted {
            first_block,
            num_blocks,
        } if first_block as usize == expected_first && num_blocks as usize == expected_count => {}
        PrefillFrame::Accepted {
            first_block,
            num_blocks,
        } => {
            return Err(PullError::Protocol(format!(
                "offered blocks {first_block}+{num_blocks}, asked for {expected_first}+{expected_count}"
            )))
        }
        other => return Err(unexpected(other)),
    }
    // Reading the next chunk off the network overlaps importing the previous one (an import
    // waits for the engine thread to finish its current step).
    let (chunks, mut to_import) = mpsc::channel::<(usize, Vec<u8>)>(IMPORT_QUEUE);
    let total_blocks = reservation.total_blocks();
    let per_block = reservation.bytes_per_block();
    let read = async move {
        let mut next = expected_first;
        let mut received = 0u64;
        let mut first_blocks_at = None;
        let mut wait = (cfg.first_blocks, "no blocks after the prefill deadline");
        loop {
            match next_frame(&mut recv, wait.0, wait.1).await? {
                PrefillFrame::Blocks { first_block, count } => {
                    first_blocks_at.get_or_insert_with(Instant::now);
                    let bytes = recv
                        .recv_bytes()
                        .await
                        .map_err(broken_or_stalled)?
                        .ok_or_else(|| PullError::Protocol("stream ended inside a chunk".into()))?;
                    if first_block as usize != next || bytes.len() != count as usize * per_block {
                        return Err(PullError::Protocol(format!(
                            "chunk at block {first_block} with {} bytes for {count} blocks, expected block {next}",
                            bytes.len()
                        )));
                    }
                    received += bytes.len() as u64;
                    if chunks.send((next, bytes)).await.is_err() {
                        break; // the importer failed; its error is the one reported
                    }
                    next += count as usize;
                }
                PrefillFrame::End if next == total_blocks => break,
                PrefillFrame::End => {
                    return Err(PullError::Protocol(format!(
                        "ended at block {next} of {total_blocks}"
                    )))
                }
                other => return Err(unexpected(other)),
            }
            wait = (cfg.between_chunks, "stalled between chunks");
        }
        Ok((received, first_blocks_at.unwrap_or_else(Instant::now)))
    };
    let import = async {
        while let Some((first_block, bytes)) = to_import.recv().await {
            reservation
                .import(first_block, bytes)
                .await
                .map_err(PullError::Import)?;
        }
        Ok(())
    };
    let ((received, first_blocks_at), ()) = tokio::try_join!(read, import)?;
    reservation.complete().await.map_err(PullError::Import)?;
    Ok(PulledKv {
        bytes: received,
        until_first_blocks: first_blocks_at - started,
        transfer: first_blocks_at.elapsed(),
    })
}

async fn next_frame(
    recv: &mut FramedRecv,
    wait: Duration,
    stalled: &'static str,
) -> Result<PrefillFrame, PullError> {
    recv.set_frame_timeout(wait);
    match recv.recv::<PrefillFrame>().await {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(PullError::Protocol("the stream ended early".into())),
        Err(RpcError::Timeout) => Err(PullError::Stalled(stalled)),
        Err(e) => Err(PullError::Broken(e)),
    }
}

fn broken_or_stalled(e: RpcError) -> PullError {
    match e {
        RpcError::Timeout => PullError::Stalled("stalled inside a chunk"),
        other => PullError::Broken(other),
    }
}

fn unexpected(frame: PrefillFrame) -> PullError {
    match frame {
        PrefillFrame::Refused(refusal) => PullError::Refused(refusal),
        other => PullError::Protocol(format!("unexpected frame {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_whole_blocks_below_the_limit_and_at_least_one() {
        let cfg = KvTransferConfig {
            max_chunk_bytes: 1000,
            ..KvTransferConfig::default()
        };
        assert_eq!(cfg.blocks_per_chunk(300), 3);
        assert_eq!(cfg.blocks_per_chunk(1000), 1);
        assert_eq!(cfg.blocks_per_chunk(5000), 1);
    }
}

#[cfg(test)]
#[path = "kv_transfer_tests.rs"]
mod protocol_tests;
