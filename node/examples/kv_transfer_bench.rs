//! KV transfer over QUIC on loopback (issue 5, benchmark 4): throughput, per-transfer latency
//! and the transfer's share of time to first token.
//!
//! cargo run --release -p stator --example kv_transfer_bench -- [TRIALS] [JSON_OUT]
//!
//! Two engines in one process (CPU backend, SmolLM2-135M geometry with random weights: 45 KiB
//! of f32 KV per token) behind two QUIC endpoints with cluster certificates, wired exactly as
//! peers wire them: the decode side reserves blocks, pulls them from the prefill side's
//! `worker.prefill` stream, imports each chunk as it arrives, then submits the request on the
//! imported prefix and waits for its first token. Every trial uses a fresh prompt, so nothing
//! is cached on either side. "transfer" is first block frame → last block imported and
//! published; "TTFT" is reservation → first token (remote prefill included).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stator::worker::kv_transfer::{pull_prefix, KvTransferConfig};
use stator::worker::prefill::{serve_prefill, PrefillService};
use stator::worker::wire::PrefillHeader;
use stator_gpu::backend::cpu::CpuBackend;
use stator_gpu::engine::{Engine, EngineConfig, EngineHandle};
use stator_gpu::presets::preset;
use stator_gpu::random_weights::random_weights;
use stator_gpu::request::{EngineEvent, GenerateRequest, SamplingParams};
use stator_transport::{ClusterCa, Endpoint, TransportConfig};

const MODEL: &str = "smollm2-135m";
const BLOCK_SIZE: usize = 16;
const KV_BLOCKS: usize = 160;
/// Prompt lengths in tokens (the transferred part is the full blocks before the last token).
const SIZES: [usize; 4] = [129, 257, 513, 1025];

struct Trial {
    bytes: u64,
    transfer: Duration,
    until_first_blocks: Duration,
    ttft: Duration,
}

fn engine() -> EngineHandle {
    let config = preset(MODEL).expect("preset");
    let weights = random_weights(&config, 11);
    let backend = CpuBackend::new(config, weights, KV_BLOCKS, BLOCK_SIZE).expect("cpu backend");
    Engine::start(Box::new(backend), EngineConfig::default(), vec![])
}

fn endpoint(ca: &ClusterCa, node_id: u64) -> Endpoint {
    let identity = ca.issue_identity(node_id).expect("identity");
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Endpoint::bind(any, identity, TransportConfig::default()).expect("bind")
}

/// A prompt no earlier trial shares a block with (its first token differs).
fn prompt(trial: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((trial * 7919 + i * 131 + 1) % 49_000) as u32)
        .collect()
}

async fn one_trial(
    decode: &EngineHandle,
    endpoint: &Endpoint,
    prefill_addr: SocketAddr,
    cfg: &KvTransferConfig,
    id: usize,
    prompt: Vec<u32>,
) -> Trial {
    let started = Instant::now();
    let full = (prompt.len() - 1) / BLOCK_SIZE * BLOCK_SIZE;
    let tokens = prompt[..full].to_vec();
    let reservation = decode.reserve_prefix(&tokens).await.expect("reserve");
    assert_eq!(
        reservation.first_block(),
        0,
        "trial prompts must not be cached"
    );
    let header = PrefillHeader {
        request_id: format!("bench-{id}"),
        epoch: 1,
        model: MODEL.into(),
        layout: decode.kv_layout(),
        tokens,
        from_block: 0,
        deadline_ms: cfg.total.as_millis() as u64,
    };
    let pulled = pull_prefix(endpoint, prefill_addr, &header, &reservation, cfg)
        .await
        .expect("pull");
    let request = GenerateRequest {
        id: format!("bench-{id}"),
        prompt,
        generated: vec![],
        params: SamplingParams {
            temperature: 0.0,
            max_tokens: 1,
            ..SamplingParams::default()
        },
    };
    let mut events = decode
        .submit_with_prefix(request, reservation)
        .expect("submit");
    match events.next().await.expect("event") {
        EngineEvent::Token { .. } => {}
        EngineEvent::Failed { message } => panic!("decode failed: {message}"),
        EngineEvent::Finished { .. } => panic!("finished without a token"),
    }
    let ttft = started.elapsed();
    Trial {
        bytes: pulled.bytes,
        transfer: pulled.transfer,
        until_first_blocks: pulled.until_first_blocks,
        ttft,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn sorted(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v
}

const RAW_STREAM: &str = "bench.raw_bytes";

/// The same bytes over a bare framed stream (no engines): what the transport alone sustains.
async fn raw_baseline(
    server: &Endpoint,
    client: &Endpoint,
    trials: usize,
    chunk_bytes: usize,
) -> serde_json::Value {
    server.register_stream(RAW_STREAM, move |_peer, mut send, mut recv| async move {
        let Ok(Some(total)) = recv.recv::<u64>().await else {
            return;
        };
        let chunk = vec![7u8; chunk_bytes];
        let mut left = total as usize;
        while left > 0 {
            let n = left.min(chunk_bytes);
            if send.send_bytes(&chunk[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
        let _ = send.finish().await;
    });
    let total: u64 = 45 * 1024 * 1024;
    let mut gbps = Vec::with_capacity(trials);
    for _ in 0..trials {
        let (mut send, mut recv) = client
            .open_stream(server.local_addr(), RAW_STREAM)
            .await
            .expect("open raw stream");
        send.send(&total).await.expect("send size");
        let mut got = 0u64;
        let mut started = None;
        while let Some(bytes) = recv.recv_bytes().await.expect("raw frame") {
            started.get_or_insert_with(Instant::now);
            got += bytes.len() as u64;
        }
        let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
        gbps.push(got as f64 / elapsed.as_secs_f64() / 1e9);
    }
    let gbps = sorted(gbps.into_iter());
    println!(
        "raw framed stream, {} MiB in {} MiB frames: {:.2} GB/s p50, {:.2} GB/s p1",
        total >> 20,
        chunk_bytes >> 20,
        percentile(&gbps, 50.0),
        percentile(&gbps, 1.0)
    );
    serde_json::json!({
        "bytes": total,
        "frame_bytes": chunk_bytes,
        "trials": trials,
        "throughput_gb_per_s": {"p50": percentile(&gbps, 50.0), "p1": percentile(&gbps, 1.0),
                                "max": gbps[gbps.len() - 1]},
        "definition": "first frame received -> stream finished; same endpoints, no engines",
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let trials: usize = args
        .next()
        .map(|s| s.parse().expect("TRIALS must be a number"))
        .unwrap_or(30);
    let json_out = args.next();

    let ca = ClusterCa::generate("kv-bench").expect("ca");
    let prefill_endpoint = endpoint(&ca, 1);
    let decode_endpoint = endpoint(&ca, 2);
    let cfg = KvTransferConfig::default();
    let prefill_engine = engine();
    serve_prefill(
        &prefill_endpoint,
        Arc::new(PrefillService {
            engine: prefill_engine.clone(),
            model: MODEL.into(),
            transfer: cfg.clone(),
        }),
    );
    let decode = engine();
    let addr = prefill_endpoint.local_addr();
    let per_block = decode.kv_layout().bytes_per_block();
    println!(
        "KV transfer over QUIC on loopback: {MODEL} geometry, {per_block} bytes per {BLOCK_SIZE}-token block (f32), {} per chunk, {trials} trials per size",
        cfg.blocks_per_chunk(per_block)
    );
    // Warm-up: connection, thread pools, allocator.
    one_trial(
        &decode,
        &decode_endpoint,
        addr,
        &cfg,
        1_000_000,
        prompt(1_000_000, 129),
    )
    .await;

    let mut rows = Vec::new();
    println!(
        "{:>7} {:>7} {:>9} | {:>9} {:>9} {:>8} | {:>9} {:>9} | {:>9} {:>9} | {:>7}",
        "tokens",
        "blocks",
        "MiB",
        "xfer p50",
        "xfer p99",
        "GB/s p50",
        "pre p50",
        "pre p99",
        "TTFT p50",
        "TTFT p99",
        "share"
    );
    for (size_index, &len) in SIZES.iter().enumerate() {
        let mut results = Vec::with_capacity(trials);
        for t in 0..trials {
            let id = size_index * 100_000 + t;
            results
                .push(one_trial(&decode, &decode_endpoint, addr, &cfg, id, prompt(id, len)).await);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let transfer = sorted(results.iter().map(|r| ms(r.transfer)));
        let before = sorted(results.iter().map(|r| ms(r.until_first_blocks)));
        let ttft = sorted(results.iter().map(|r| ms(r.ttft)));
        let gbps = sorted(
            results
                .iter()
                .map(|r| r.bytes as f64 / r.transfer.as_secs_f64() / 1e9),
        );
        let shares = sorted(
            results
                .iter()
                .map(|r| r.transfer.as_secs_f64() / r.ttft.as_secs_f64()),
        );
        let bytes = results[0].bytes;
        let blocks = bytes as usize / per_block;
        println!(
            "{:>7} {:>7} {:>9.1} | {:>7.2}ms {:>7.2}ms {:>8.2} | {:>7.1}ms {:>7.1}ms | {:>7.1}ms {:>7.1}ms | {:>6.1}%",
            len,
            blocks,
            bytes as f64 / (1 << 20) as f64,
            percentile(&transfer, 50.0),
            percentile(&transfer, 99.0),
            percentile(&gbps, 50.0),
            percentile(&before, 50.0),
            percentile(&before, 99.0),
            percentile(&ttft, 50.0),
            percentile(&ttft, 99.0),
            percentile(&shares, 50.0) * 100.0,
        );
        rows.push(serde_json::json!({
            "prompt_tokens": len,
            "blocks": blocks,
            "bytes": bytes,
            "trials": trials,
            "transfer_ms": {"p50": percentile(&transfer, 50.0), "p99": percentile(&transfer, 99.0),
                            "min": transfer[0], "max": transfer[transfer.len() - 1]},
            "throughput_gb_per_s": {"p50": percentile(&gbps, 50.0), "p1": percentile(&gbps, 1.0),
                                    "max": gbps[gbps.len() - 1]},
            "until_first_blocks_ms": {"p50": percentile(&before, 50.0), "p99": percentile(&before, 99.0)},
            "ttft_ms": {"p50": percentile(&ttft, 50.0), "p99": percentile(&ttft, 99.0)},
            "transfer_share_of_ttft": {"p50": percentile(&shares, 50.0), "p99": percentile(&shares, 99.0)},
        }));
    }
    let mut report = serde_json::json!({
        "benchmark": "kv_transfer_quic_loopback",
        "model_geometry": MODEL,
        "kv_dtype": "f32",
        "block_size": BLOCK_SIZE,
        "bytes_per_block": per_block,
        "blocks_per_chunk": cfg.blocks_per_chunk(per_block),
        "backend": "cpu",
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "definitions": {
            "transfer": "first block frame received -> every block imported into the decode engine and published in its prefix cache",
            "until_first_blocks": "request sent -> first block frame (connect + remote prefill)",
            "ttft": "decode-side reservation -> first token sampled on the decode engine",
        },
        "sizes": rows,
    });
    let raw = raw_baseline(
        &prefill_endpoint,
        &decode_endpoint,
        trials,
        cfg.max_chunk_bytes,
    )
    .await;
    report["raw_stream_baseline"] = raw;
    if let Some(path) = json_out {
        std::fs::write(&path, serde_json::to_string_pretty(&report).expect("json"))
            .expect("write JSON");
        println!("wrote {path}");
    }
    decode.shutdown();
    prefill_engine.shutdown();
}
