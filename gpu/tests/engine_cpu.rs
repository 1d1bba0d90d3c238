//! The engine over the real CPU backend (the "tiny" preset with random weights): batching,
//! prefix reuse, preemption and resume must not change what a real transformer generates.

use std::time::Duration;

use stator_gpu::backend::cpu::CpuBackend;
use stator_gpu::engine::{Engine, EngineConfig, EngineHandle, EventStream};
use stator_gpu::presets::preset;
use stator_gpu::random_weights::random_weights;
use stator_gpu::request::{EngineEvent, GenerateRequest, SamplingParams};

const BLOCK_SIZE: usize = 16;
const DEADLINE: Duration = Duration::from_secs(60);

fn start(num_blocks: usize, cfg: EngineConfig) -> EngineHandle {
    let config = preset("tiny").expect("tiny preset");
    let weights = random_weights(&config, 7);
    let backend = CpuBackend::new(config, weights, num_blocks, BLOCK_SIZE).expect("cpu backend");
    Engine::start(Box::new(backend), cfg, vec![])
}

fn request(id: usize, prompt_len: usize, params: SamplingParams) -> GenerateRequest {
    let prompt = (0..prompt_len)
        .map(|i| ((id * 53 + i * 17) % 250) as u32)
        .collect();
    GenerateRequest {
        id: format!("req-{id}"),
        prompt,
        generated: vec![],
        params,
    }
}

/// Even ids decode greedily, odd ids sample with a seed.
fn params(id: usize) -> SamplingParams {
    let parity = id % 2;
    if parity == 0 {
        SamplingParams {
            temperature: 0.0,
            max_tokens: 10,
            ..SamplingParams::default()
        }
    } else {
        SamplingParams {
            temperature: 0.8,
            top_p: 0.9,
            seed: id as u64,
            max_tokens: 10,
            ..SamplingParams::default()
        }
    }
}

/// The output tokens and the final event.
async fn collect(mut stream: EventStream) -> (Vec<u32>, EngineEvent) {
    let mut tokens = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("engine stalled")
            .expect("stream ended")
        {
            EngineEvent::Token { token, .. } => tokens.push(token),
            end => return (tokens, end),
        }
    }
}

async fn run_each_alone(requests: &[GenerateRequest]) -> Vec<(Vec<u32>, EngineEvent)> {
    let mut out = Vec::new();
    for req in requests {
        let engine = start(
            64,
            EngineConfig {
                enable_prefix_caching: false,
                ..EngineConfig::default()
            },
        );
        out.push(collect(engine.submit(req.clone()).unwrap()).await);
        engine.shutdown();
    }
    out
}

async fn run_together(
    engine: &EngineHandle,
    requests: &[GenerateRequest],
) -> Vec<(Vec<u32>, EngineEvent)> {
    let streams: Vec<EventStream> = requests
        .iter()
        .map(|r| engine.submit(r.clone()).unwrap())
        .collect();
    let mut out = Vec::new();
    for stream in streams {
        out.push(collect(stream).await);
    }
    out
}

fn tokens_only(results: &[(Vec<u32>, EngineEvent)]) -> Vec<Vec<u32>> {
    results.iter().map(|(t, _)| t.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_and_chunked_prefill_do_not_change_outputs() {
    let requests: Vec<GenerateRequest> =
        (0..6).map(|i| request(i, 20 + 9 * i, params(i))).collect();
    let alone = run_each_alone(&requests).await;
    let engine = start(
        64,
        EngineConfig {
            max_batch_tokens: 24,
            ..EngineConfig::default()
        },
    );
    let together = run_together(&engine, &requests).await;
    assert_eq!(tokens_only(&together), tokens_only(&alone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_reuse_and_preemption_do_not_change_outputs() {
    // All requests share a 48-token system prompt (3 full blocks).
    let system: Vec<u32> = (0..48).map(|i| (i * 5 % 250) as u32).collect();
    let requests: Vec<GenerateRequest> = (0..6)
        .map(|i| {
            let mut r = request(i, 10 + i, params(i));
            r.prompt.splice(0..0, system.iter().copied());
            r
        })
        .collect();
    let alone = run_each_alone(&requests).await;
    // 12 blocks of 16 tokens: 6 requests of ~70 tokens cannot all be resident.
    let engine = start(12, EngineConfig::default());
    let together = run_together(&engine, &requests).await;
    assert_eq!(tokens_only(&together), tokens_only(&alone));
    let cached: usize = together
        .iter()
        .map(|(_, end)| match end {
            EngineEvent::Finished { cached_tokens, .. } => *cached_tokens,
            other => panic!("{other:?}"),
        })
        .sum();
    assert!(cached >= 48, "the shared system prompt was never reused");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while engine.stats().running > 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(engine.stats().preemptions_total > 0, "{:?}", engine.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_request_matches_the_uninterrupted_one() {
    let original = request(
        1,
        30,
        SamplingParams {
            max_tokens: 16,
            ..params(1)
        },
    );
    let full = run_each_alone(std::slice::from_ref(&original))
        .await
        .remove(0)
        .0;
    let resumed = GenerateRequest {
        generated: full[..6].to_vec(),
        ..original
    };
    let rest = run_each_alone(&[resumed]).await.remove(0).0;
    assert_eq!(rest, full[6..]);
}
