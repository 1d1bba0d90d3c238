//! The `worker.prefill` protocol between two in-process endpoints with cluster certificates and
//! two engines over the CPU backend ("tiny" preset, random weights).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stator_gpu::backend::cpu::CpuBackend;
use stator_gpu::engine::{Engine, EngineConfig, EngineHandle, EventStream};
use stator_gpu::presets::preset;
use stator_gpu::random_weights::random_weights;
use stator_gpu::request::{EngineEvent, GenerateRequest, SamplingParams};
use stator_transport::{ClusterCa, Endpoint, TransportConfig};

use super::*;
use crate::worker::prefill::{serve_prefill, PrefillService};
use crate::worker::wire::PrefillFrame;

const MODEL: &str = "tiny";
const BLOCK_SIZE: usize = 16;

fn engine() -> EngineHandle {
    let config = preset(MODEL).expect("tiny preset");
    let weights = random_weights(&config, 3);
    let backend = CpuBackend::new(config, weights, 64, BLOCK_SIZE).expect("cpu backend");
    Engine::start(Box::new(backend), EngineConfig::default(), vec![])
}

fn endpoint(ca: &ClusterCa, node_id: u64) -> Endpoint {
    let identity = ca.issue_identity(node_id).expect("identity");
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Endpoint::bind(any, identity, TransportConfig::default()).expect("bind")
}

struct Pair {
    decode: EngineHandle,
    decode_endpoint: Endpoint,
    prefill_engine: EngineHandle,
    prefill_addr: SocketAddr,
    _prefill_endpoint: Endpoint,
}

fn pair(served_model: &str) -> Pair {
    let ca = ClusterCa::generate("kv-test").expect("ca");
    let prefill_endpoint = endpoint(&ca, 1);
    let prefill_engine = engine();
    serve_prefill(
        &prefill_endpoint,
        Arc::new(PrefillService {
            engine: prefill_engine.clone(),
            model: served_model.into(),
            transfer: KvTransferConfig::default(),
        }),
    );
    Pair {
        decode: engine(),
        decode_endpoint: endpoint(&ca, 2),
        prefill_engine,
        prefill_addr: prefill_endpoint.local_addr(),
        _prefill_endpoint: prefill_endpoint,
    }
}

fn prompt(len: usize) -> Vec<u32> {
    (0..len).map(|i| ((i * 37 + 5) % 250) as u32).collect()
}

fn header(decode: &EngineHandle, tokens: Vec<u32>, from_block: u32) -> PrefillHeader {
    PrefillHeader {
        request_id: "r".into(),
        epoch: 1,
        model: MODEL.into(),
        layout: decode.kv_layout(),
        tokens,
        from_block,
        deadline_ms: 10_000,
    }
}

fn greedy(prompt: Vec<u32>) -> GenerateRequest {
    GenerateRequest {
        id: "g".into(),
        prompt,
        generated: vec![],
        params: SamplingParams {
            temperature: 0.0,
            max_tokens: 8,
            ..SamplingParams::default()
        },
    }
}

async fn tokens_of(mut events: EventStream) -> (Vec<u32>, usize) {
    let mut tokens = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("engine stalled")
            .expect("stream ended")
        {
            EngineEvent::Token { token, .. } => tokens.push(token),
            EngineEvent::Finished { cached_tokens, .. } => return (tokens, cached_tokens),
            EngineEvent::Failed { message } => panic!("failed: {message}"),
        }
    }
}

async fn used_blocks_settle(engine: &EngineHandle, expected: usize) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while engine.stats().kv_blocks_used != expected {
        assert!(Instant::now() < give_up, "blocks still held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_blocks_decode_exactly_like_a_local_prefill() {
    let p = pair(MODEL);
    let prompt = prompt(120);
    let (expected, _) = tokens_of(engine().submit(greedy(prompt.clone())).unwrap()).await;
    let part = prompt[..112].to_vec();
    let reservation = p.decode.reserve_prefix(&part).await.unwrap();
    // Small chunks: several frames, imported as they arrive.
    let cfg = KvTransferConfig {
        max_chunk_bytes: 2 * reservation.bytes_per_block(),
        ..KvTransferConfig::default()
    };
    let pulled = pull_prefix(
        &p.decode_endpoint,
        p.prefill_addr,
        &header(&p.decode, part.clone(), 0),
        &reservation,
        &cfg,
    )
    .await
    .expect("pull");
    assert_eq!(pulled.bytes as usize, 7 * reservation.bytes_per_block());
    let events = p
        .decode
        .submit_with_prefix(greedy(prompt), reservation)
        .unwrap();
    let (tokens, cached) = tokens_of(events).await;
    assert_eq!(tokens, expected);
    assert_eq!(cached, part.len());
    // The prefill side freed its sequence and keeps the prefix cached.
    used_blocks_settle(&p.prefill_engine, 0).await;
    assert!(p.prefill_engine.stats().kv_blocks_cached >= 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_model_or_layout_is_refused_with_a_typed_reason() {
    let p = pair("some-other-model");
    let part = prompt(32);
    let reservation = p.decode.reserve_prefix(&part).await.unwrap();
    let cfg = KvTransferConfig::default();
    let err = pull_prefix(
        &p.decode_endpoint,
        p.prefill_addr,
        &header(&p.decode, part.clone(), 0),
        &reservation,
        &cfg,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Refused(PrefillRefusal::ModelMismatch { .. })
        ),
        "{err}"
    );
    assert_eq!(err.reason(), "model_mismatch");

    drop(reservation);
    used_blocks_settle(&p.decode, 0).await;

    let p = pair(MODEL);
    let reservation = p.decode.reserve_prefix(&part).await.unwrap();
    let mut wrong = header(&p.decode, part.clone(), 0);
    wrong.layout.block_size = 32;
    let err = pull_prefix(
        &p.decode_endpoint,
        p.prefill_addr,
        &wrong,
        &reservation,
        &cfg,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "layout_mismatch", "{err}");
    // Nothing ran on the prefill side, and the decode side's blocks go back when dropped.
    assert_eq!(p.prefill_engine.stats().kv_blocks_cached, 0);
    drop(reservation);
    used_blocks_settle(&p.decode, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefill_worker_that_goes_silent_is_given_up_within_its_deadline() {
    let ca = ClusterCa::generate("kv-test").expect("ca");
    let silent = endpoint(&ca, 1);
    silent.register_stream(PREFILL_STREAM, |_peer, mut send, mut recv| async move {
        let _ = recv.recv::<PrefillHeader>().await;
        let accepted = PrefillFrame::Accepted {
            first_block: 0,
            num_blocks: 2,
        };
        let _ = send.send(&accepted).await;
        // Then nothing, holding the stream open.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop((send, recv));
    });
    let decode = engine();
    let decode_endpoint = endpoint(&ca, 2);
    let reservation = decode.reserve_prefix(&prompt(32)).await.unwrap();
    let cfg = KvTransferConfig {
        first_blocks: Duration::from_millis(300),
        ..KvTransferConfig::default()
    };
    let started = Instant::now();
    let err = pull_prefix(
        &decode_endpoint,
        silent.local_addr(),
        &header(&decode, prompt(32), 0),
        &reservation,
        &cfg,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "stalled", "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_prefill_worker_fails_at_connect() {
    let ca = ClusterCa::generate("kv-test").expect("ca");
    let decode = engine();
    let decode_endpoint = endpoint(&ca, 2);
    let reservation = decode.reserve_prefix(&prompt(32)).await.unwrap();
    let nobody = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let cfg = KvTransferConfig {
        connect: Duration::from_millis(300),
        ..KvTransferConfig::default()
    };
    let err = pull_prefix(
        &decode_endpoint,
        nobody,
        &header(&decode, prompt(32), 0),
        &reservation,
        &cfg,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "connect", "{err}");
}
