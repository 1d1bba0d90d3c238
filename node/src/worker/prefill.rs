//! The `worker.prefill` stream: computes a prompt prefix on the local engine for a decode worker
//! on another peer and pushes its KV blocks back in chunks. Only cluster members can open it
//! (the transport refuses anyone without a cluster certificate).

use std::sync::Arc;
use std::time::Duration;

use stator_gpu::backend::KvLayout;
use stator_gpu::engine::{EngineHandle, ExportedBlocks, SubmitError};
use stator_transport::{Endpoint, FramedRecv, FramedSend, PeerInfo};
use tracing::{debug, info};

use super::kv_transfer::KvTransferConfig;
use super::wire::{PrefillFrame, PrefillHeader, PrefillRefusal, PREFILL_STREAM};

pub struct PrefillService {
    pub engine: EngineHandle,
    /// Served model name: requests for another model are refused.
    pub model: String,
    pub transfer: KvTransferConfig,
}

/// Registers the `worker.prefill` handler on `endpoint`.
pub fn serve_prefill(endpoint: &Endpoint, service: Arc<PrefillService>) {
    endpoint.register_stream(PREFILL_STREAM, move |peer, send, recv| {
        let service = service.clone();
        async move { service.handle(peer, send, recv).await }
    });
}

impl PrefillService {
    async fn handle(&self, peer: PeerInfo, mut send: FramedSend, mut recv: FramedRecv) {
        let header: PrefillHeader = match recv.recv().await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                debug!(peer = ?peer.node_id, error = %e, "unreadable prefill header");
                return;
            }
        };
        send.set_frame_timeout(self.transfer.between_chunks);
        match self.serve(&header, &mut send, &mut recv).await {
            Ok(()) => {
                let _ = send.finish().await;
            }
            Err(Ending::Refused(refusal)) => {
                info!(request = %header.request_id, epoch = header.epoch, %refusal, "prefill refused");
                metrics::counter!("stator_prefill_refused_total", "reason" => refusal.reason())
                    .increment(1);
                let _ = send.send(&PrefillFrame::Refused(refusal)).await;
                let _ = send.finish().await;
            }
            Err(Ending::CallerGone(why)) => {
                debug!(request = %header.request_id, why, "prefill caller gone");
                metrics::counter!("stator_prefill_abandoned_total").increment(1);
            }
        }
        drop(recv);
    }

    async fn serve(
        &self,
        header: &PrefillHeader,
        send: &mut FramedSend,
        recv: &mut FramedRecv,
    ) -> Result<(), Ending> {
        self.check(header)?;
        let engine_id = format!("{}/prefill/{}", header.request_id, header.epoch);
        let export = self
            .engine
            .prefill_export(
                &engine_id,
                header.tokens.clone(),
                header.from_block as usize,
            )
            .map_err(|e| {
                Ending::Refused(match e {
                    SubmitError::QueueFull { .. } | SubmitError::Shutdown => {
                        PrefillRefusal::Busy(e.to_string())
                    }
                    other => PrefillRefusal::Invalid(other.to_string()),
                })
            })?;
        let num_blocks =
            header.tokens.len() / header.layout.block_size - header.from_block as usize;
        send.send(&PrefillFrame::Accepted {
            first_block: header.from_block,
            num_blocks: num_blocks as u32,
        })
        .await
        .map_err(|_| Ending::CallerGone("cannot accept"))?;
        let deadline = Duration::from_millis(header.deadline_ms).min(self.transfer.total);
        // The caller closing its side means it gave up: stop computing for it.
        recv.set_frame_timeout(deadline);
        let blocks = tokio::select! {
            result = tokio::time::timeout(deadline, export.wait()) => match result {
                Err(_) => return Err(Ending::Refused(PrefillRefusal::Failed(format!(
                    "not done within the caller's {deadline:?}"
                )))),
                Ok(Err(e)) => return Err(Ending::Refused(PrefillRefusal::Failed(e.to_string()))),
                Ok(Ok(blocks)) => blocks,
            },
            _ = recv.recv_bytes() => return Err(Ending::CallerGone("closed while prefilling")),
        };
        metrics::counter!("stator_prefill_total", "where" => "remote").increment(1);
        self.push(blocks, send).await
    }

    fn check(&self, header: &PrefillHeader) -> Result<(), Ending> {
        let refuse = |r| Err(Ending::Refused(r));
        if header.model != self.model {
            return refuse(PrefillRefusal::ModelMismatch {
                served: self.model.clone(),
                asked: header.model.clone(),
            });
        }
        let layout: KvLayout = self.engine.kv_layout();
        if header.layout != layout {
            return refuse(PrefillRefusal::LayoutMismatch {
                served: layout,
                asked: header.layout.clone(),
            });
        }
        if layout.bytes_per_block() > self.transfer.max_chunk_bytes {
            return refuse(PrefillRefusal::Invalid(format!(
                "one block of {} bytes exceeds the {}-byte chunk limit",
                layout.bytes_per_block(),
                self.transfer.max_chunk_bytes
            )));
        }
        Ok(())
    }

    /// Sends the blocks in frames of whole blocks, then `End`.
    async fn push(&self, blocks: ExportedBlocks, send: &mut FramedSend) -> Result<(), Ending> {
        let per_block = blocks.bytes.len() / blocks.num_blocks.max(1);
        let per_chunk = self.transfer.blocks_per_chunk(per_block);
        let gone = |_| Ending::CallerGone("stopped reading blocks");
        let mut first_block = blocks.first_block;
        for chunk in blocks.bytes.chunks(per_chunk * per_block.max(1)) {
            let count = chunk.len() / per_block.max(1);
            send.send(&PrefillFrame::Blocks {
                first_block: first_block as u32,
                count: count as u32,
            })
            .await
            .map_err(gone)?;
            send.send_bytes(chunk).await.map_err(gone)?;
            metrics::counter!("stator_kv_transfer_bytes_total", "direction" => "sent")
                .increment(chunk.len() as u64);
            first_block += count;
        }
        send.send(&PrefillFrame::End).await.map_err(gone)
    }
}

enum Ending {
    Refused(PrefillRefusal),
    CallerGone(&'static str),
}
