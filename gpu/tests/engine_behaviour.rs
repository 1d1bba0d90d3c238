//! Engine behaviour over a deterministic test backend.
//!
//! `RollingBackend` keeps real per-block KV bytes: each position stores a state derived from the
//! state at the previous position (read back from its block) and the token, and logits come from
//! the last state. Wrong block tables, wrong prefix reuse or a wrong recompute therefore change
//! the sampled tokens, which is what these tests compare.

use std::sync::mpsc;
use std::time::Duration;

use stator_gpu::backend::{Backend, BackendError, KvDtype, KvLayout, Logits, SeqStep};
use stator_gpu::config::ModelConfig;
use stator_gpu::engine::{Engine, EngineConfig, EngineHandle, EventStream, SubmitError};
use stator_gpu::kv::{block_hashes, KvEvent};
use stator_gpu::request::{EngineEvent, FinishReason, GenerateRequest, SamplingParams};

const VOCAB: usize = 101;
const BLOCK_SIZE: usize = 4;
/// A prompt containing this token makes the backend fail the whole forward pass.
const POISON: u32 = 100;
/// A prompt containing this token makes the backend panic.
const PANIC: u32 = 99;
/// Tokens from here on are test triggers (above) and never sampled.
const TRIGGERS_FROM: u32 = 97;
const DEADLINE: Duration = Duration::from_secs(30);

/// Holds the first forward pass until the test releases it.
struct Gate {
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

struct RollingBackend {
    config: ModelConfig,
    layout: KvLayout,
    num_blocks: usize,
    /// Per block: K slots (states) then V slots (tokens), `u32` little-endian each.
    storage: Vec<u8>,
    gate: Option<Gate>,
    /// Slows every forward pass so long requests are still running when a test looks.
    step_delay: Duration,
    /// Dropped with the backend: tells a test the engine thread has ended.
    _alive: Option<mpsc::Sender<()>>,
}

impl RollingBackend {
    fn new(num_blocks: usize) -> Self {
        let config = ModelConfig {
            architecture: "rolling-test".into(),
            vocab_size: VOCAB,
            hidden_size: 1,
            intermediate_size: 1,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 1,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            attention_bias: false,
        };
        let layout = KvLayout {
            num_layers: 1,
            num_kv_heads: 1,
            head_dim: 1,
            block_size: BLOCK_SIZE,
            dtype: KvDtype::F32,
        };
        let storage = vec![0; num_blocks * layout.bytes_per_block()];
        Self {
            config,
            layout,
            num_blocks,
            storage,
            gate: None,
            step_delay: Duration::ZERO,
            _alive: None,
        }
    }

    fn slot(&self, block: u32, offset: usize, value: bool) -> usize {
        let base = block as usize * self.layout.bytes_per_block();
        base + (usize::from(value) * BLOCK_SIZE + offset) * 4
    }

    fn read(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.storage[at..at + 4].try_into().unwrap())
    }

    fn write(&mut self, at: usize, value: u32) {
        self.storage[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }
}

fn mix(a: u64, b: u64) -> u64 {
    let mut x = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

impl Backend for RollingBackend {
    fn name(&self) -> String {
        "rolling-test".into()
    }
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn kv_layout(&self) -> &KvLayout {
        &self.layout
    }
    fn num_kv_blocks(&self) -> usize {
        self.num_blocks
    }

    fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Logits, BackendError> {
        if let Some(gate) = self.gate.take() {
            let _ = gate.entered.send(());
            let _ = gate.release.recv_timeout(DEADLINE);
        }
        std::thread::sleep(self.step_delay);
        let mut logits = Logits {
            vocab_size: VOCAB,
            data: Vec::new(),
        };
        for step in batch {
            assert!(!step.tokens.contains(&PANIC), "test backend asked to panic");
            if step.tokens.contains(&POISON) {
                return Err(BackendError::Device("poisoned token".into()));
            }
            let end = step.start_pos + step.tokens.len();
            if step.tokens.is_empty() || step.block_table.len() * BLOCK_SIZE < end {
                return Err(BackendError::InvalidBatch("block table too short".into()));
            }
            let mut state = 0u32;
            for (i, &token) in step.tokens.iter().enumerate() {
                let pos = step.start_pos + i;
                let prev = if pos == 0 {
                    0x5EED
                } else {
                    self.read(self.slot(
                        step.block_table[(pos - 1) / BLOCK_SIZE],
                        (pos - 1) % BLOCK_SIZE,
                        false,
                    ))
                };
                state = mix(prev as u64, token as u64 + ((pos as u64) << 32)) as u32;
                let block = step.block_table[pos / BLOCK_SIZE];
                let (k, v) = (
                    self.slot(block, pos % BLOCK_SIZE, false),
                    self.slot(block, pos % BLOCK_SIZE, true),
                );
                self.write(k, state);
                self.write(v, token);
            }
            if step.want_logits {
                // Spread-out values so that seeded sampling has real choices to make; the
                // trigger tokens are never generated.
                logits.data.extend((0..VOCAB as u64).map(|v| {
                    if v >= TRIGGERS_FROM as u64 {
                        f32::NEG_INFINITY
                    } else {
                        (mix(state as u64, v) % 1000) as f32 / 250.0
                    }
                }));
            }
        }
        Ok(logits)
    }

    fn export_blocks(&self, blocks: &[u32], out: &mut Vec<u8>) -> Result<(), BackendError> {
        let size = self.layout.bytes_per_block();
        for &b in blocks {
            let start = b as usize * size;
            let bytes = self
                .storage
                .get(start..start + size)
                .ok_or_else(|| BackendError::BadKvData(format!("no block {b}")))?;
            out.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn import_blocks(&mut self, blocks: &[u32], data: &[u8]) -> Result<(), BackendError> {
        let size = self.layout.bytes_per_block();
        if data.len() != blocks.len() * size
            || blocks.iter().any(|&b| b as usize >= self.num_blocks)
        {
            return Err(BackendError::BadKvData("size or block id mismatch".into()));
        }
        for (&b, chunk) in blocks.iter().zip(data.chunks_exact(size)) {
            self.storage[b as usize * size..(b as usize + 1) * size].copy_from_slice(chunk);
        }
        Ok(())
    }
}

fn start(num_blocks: usize, cfg: EngineConfig) -> EngineHandle {
    Engine::start(Box::new(RollingBackend::new(num_blocks)), cfg, vec![])
}

/// An engine whose steps take a millisecond: a long request stays in flight for a while.
fn start_slow() -> EngineHandle {
    let backend = RollingBackend {
        step_delay: Duration::from_millis(1),
        ..RollingBackend::new(256)
    };
    Engine::start(Box::new(backend), cfg(), vec![])
}

fn cfg() -> EngineConfig {
    EngineConfig::default()
}

fn request(id: &str, prompt: Vec<u32>, params: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        id: id.into(),
        prompt,
        generated: vec![],
        params,
    }
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..SamplingParams::default()
    }
}

fn seeded(seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 40,
        seed,
        max_tokens,
        ..SamplingParams::default()
    }
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (seed * 37 + i * 11) % 97).collect()
}

#[derive(Debug, PartialEq)]
struct Outcome {
    first_index: usize,
    tokens: Vec<u32>,
    end: EngineEvent,
}

async fn collect(mut stream: EventStream) -> Outcome {
    let mut first_index = None;
    let mut tokens = Vec::new();
    loop {
        let event = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("engine stalled")
            .expect("stream ended early");
        match event {
            EngineEvent::Token { index, token, .. } => {
                let first = *first_index.get_or_insert(index);
                assert_eq!(index, first + tokens.len(), "indexes must be consecutive");
                tokens.push(token);
            }
            end => {
                return Outcome {
                    first_index: first_index.unwrap_or(0),
                    tokens,
                    end,
                }
            }
        }
    }
}

async fn run_alone(req: GenerateRequest) -> Outcome {
    let engine = start(256, cfg());
    let outcome = collect(engine.submit(req).unwrap()).await;
    engine.shutdown();
    outcome
}

async fn wait_for(
    engine: &EngineHandle,
    what: &str,
    ok: impl Fn(&stator_gpu::engine::EngineStats) -> bool,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !ok(&engine.stats()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            engine.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn requests() -> Vec<GenerateRequest> {
    (0..8u32)
        .map(|i| {
            let parity = i % 2;
            let params = if parity == 0 {
                greedy(12)
            } else {
                seeded(i as u64, 12)
            };
            let params = SamplingParams {
                repetition_penalty: 1.0 + i as f32 * 0.05,
                ..params
            };
            request(&format!("r{i}"), prompt(i, 5 + 3 * i as usize), params)
        })
        .collect()
}

#[tokio::test]
async fn batched_results_equal_unbatched_results() {
    let mut alone = Vec::new();
    for req in requests() {
        alone.push(run_alone(req).await);
    }
    // A small token budget forces chunked prefill mixed with decodes.
    let engine = start(
        256,
        EngineConfig {
            max_batch_tokens: 16,
            ..cfg()
        },
    );
    let streams: Vec<EventStream> = requests()
        .into_iter()
        .map(|r| engine.submit(r).unwrap())
        .collect();
    let mut together = Vec::new();
    for stream in streams {
        together.push(collect(stream).await);
    }
    assert_eq!(together, alone);
    assert!(alone.iter().all(|o| o.tokens.len() == 12));
    // Stats are refreshed right after the step that sent the last event.
    wait_for(&engine, "all tokens counted", |s| {
        s.tokens_generated_total == 12 * 8
    })
    .await;
    let stats = engine.stats();
    assert!(
        stats.steps_total < 12 * 8,
        "requests were not batched: {stats:?}"
    );
}

#[tokio::test]
async fn prefix_cache_hits_give_the_same_tokens_as_cold_runs() {
    let shared_prefix = prompt(3, 16);
    let mut second = shared_prefix.clone();
    second.extend([5, 6, 7]);
    let cold = {
        let engine = start(
            256,
            EngineConfig {
                enable_prefix_caching: false,
                ..cfg()
            },
        );
        let a = collect(
            engine
                .submit(request("a", shared_prefix.clone(), seeded(1, 8)))
                .unwrap(),
        )
        .await;
        let b = collect(
            engine
                .submit(request("b", second.clone(), seeded(2, 8)))
                .unwrap(),
        )
        .await;
        (a, b)
    };
    let engine = start(256, cfg());
    let mut kv_events = engine.subscribe_kv_events();
    let a = collect(
        engine
            .submit(request("a", shared_prefix.clone(), seeded(1, 8)))
            .unwrap(),
    )
    .await;
    let b = collect(
        engine
            .submit(request("b", second.clone(), seeded(2, 8)))
            .unwrap(),
    )
    .await;
    assert_eq!(a.tokens, cold.0.tokens);
    assert_eq!(b.tokens, cold.1.tokens);
    let cached = |o: &Outcome| match o.end {
        EngineEvent::Finished { cached_tokens, .. } => cached_tokens,
        ref other => panic!("{other:?}"),
    };
    assert_eq!(cached(&a), 0);
    assert_eq!(cached(&b), 16, "the 4 shared full blocks are reused");
    assert_eq!(cached(&cold.1), 0);
    wait_for(&engine, "hit rate published", |s| s.prefix_hit_rate > 0.0).await;
    let mut stored = Vec::new();
    while let Ok(event) = kv_events.try_recv() {
        if let KvEvent::Stored { hashes } = event {
            stored.extend(hashes);
        }
    }
    for hash in block_hashes(&shared_prefix, BLOCK_SIZE) {
        assert!(stored.contains(&hash), "router would not learn of {hash:?}");
    }
}

#[tokio::test]
async fn dropping_the_stream_cancels_and_frees_blocks() {
    let engine = start_slow();
    let mut stream = engine
        .submit(request("long", prompt(1, 10), greedy(3000)))
        .unwrap();
    for _ in 0..3 {
        tokio::time::timeout(DEADLINE, stream.next())
            .await
            .unwrap()
            .unwrap();
    }
    assert!(engine.stats().kv_blocks_used > 0);
    drop(stream);
    wait_for(&engine, "blocks freed", |s| {
        s.kv_blocks_used == 0 && s.running == 0
    })
    .await;
    // The id is free again once the request is gone.
    let again = engine
        .submit(request("long", prompt(1, 10), greedy(2)))
        .unwrap();
    assert_eq!(collect(again).await.tokens.len(), 2);
}

#[tokio::test]
async fn cancel_by_id_ends_the_stream_as_cancelled() {
    let engine = start_slow();
    let mut stream = engine
        .submit(request("c", prompt(2, 10), greedy(3000)))
        .unwrap();
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .unwrap()
        .unwrap();
    engine.cancel("c");
    let outcome = collect(stream).await;
    assert!(
        matches!(
            outcome.end,
            EngineEvent::Finished {
                reason: FinishReason::Cancelled,
                ..
            }
        ),
        "{outcome:?}"
    );
    wait_for(&engine, "blocks freed", |s| s.kv_blocks_used == 0).await;
}

#[tokio::test]
async fn a_full_queue_refuses_new_requests() {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let mut backend = RollingBackend::new(256);
    backend.gate = Some(Gate {
        entered: entered_tx,
        release: release_rx,
    });
    let engine = Engine::start(
        Box::new(backend),
        EngineConfig {
            max_num_seqs: 1,
            max_queue: 2,
            ..cfg()
        },
        vec![],
    );
    let first = engine
        .submit(request("q0", prompt(0, 6), greedy(3)))
        .unwrap();
    entered
        .recv_timeout(DEADLINE)
        .expect("first request never reached the backend");
    let queued: Vec<EventStream> = (1..=2)
        .map(|i| {
            engine
                .submit(request(&format!("q{i}"), prompt(i, 6), greedy(3)))
                .unwrap()
        })
        .collect();
    let refused = engine.submit(request("q3", prompt(3, 6), greedy(3)));
    assert!(
        matches!(refused, Err(SubmitError::QueueFull { max_queue: 2 })),
        "{:?}",
        refused.err()
    );
    release.send(()).unwrap();
    assert_eq!(collect(first).await.tokens.len(), 3);
    for stream in queued {
        assert_eq!(collect(stream).await.tokens.len(), 3);
    }
    assert!(
        engine
            .submit(request("q3", prompt(3, 6), greedy(3)))
            .is_ok(),
        "room again after draining"
    );
}

#[tokio::test]
async fn a_resumed_request_continues_like_the_uninterrupted_run() {
    let params = SamplingParams {
        presence_penalty: 0.3,
        ..seeded(77, 20)
    };
    let full = run_alone(request("r", prompt(9, 7), params.clone())).await;
    assert_eq!(full.tokens.len(), 20);
    let resumed = GenerateRequest {
        generated: full.tokens[..7].to_vec(),
        ..request("r", prompt(9, 7), params)
    };
    let rest = run_alone(resumed).await;
    assert_eq!(rest.first_index, 7);
    assert_eq!(rest.tokens, full.tokens[7..]);
    assert!(matches!(
        rest.end,
        EngineEvent::Finished {
            completion_tokens: 20,
            prompt_tokens: 7,
            ..
        }
    ));
}

#[tokio::test]
async fn preemption_under_tiny_kv_keeps_outputs_correct() {
    let mut alone = Vec::new();
    for req in requests() {
        alone.push(run_alone(req).await);
    }
    // 12 blocks of 4 tokens: far less than the 8 requests need together.
    let engine = start(12, cfg());
    let streams: Vec<EventStream> = requests()
        .into_iter()
        .map(|r| engine.submit(r).unwrap())
        .collect();
    let mut together = Vec::new();
    for stream in streams {
        together.push(collect(stream).await);
    }
    assert_eq!(together, alone);
    wait_for(&engine, "blocks freed", |s| {
        s.kv_blocks_used == 0 && s.running == 0
    })
    .await;
    let stats = engine.stats();
    assert!(
        stats.preemptions_total > 0,
        "capacity was not tight enough: {stats:?}"
    );
}

#[tokio::test]
async fn a_failed_forward_pass_fails_only_its_requests() {
    let engine = start(256, cfg());
    let mut poisoned = prompt(1, 6);
    poisoned[3] = POISON;
    let bad = collect(engine.submit(request("bad", poisoned, greedy(4))).unwrap()).await;
    assert!(matches!(bad.end, EngineEvent::Failed { .. }), "{bad:?}");
    let good = collect(
        engine
            .submit(request("good", prompt(2, 6), greedy(4)))
            .unwrap(),
    )
    .await;
    assert_eq!(
        good,
        run_alone(request("good", prompt(2, 6), greedy(4))).await
    );
    wait_for(&engine, "blocks freed", |s| s.kv_blocks_used == 0).await;
}

#[tokio::test]
async fn a_panicking_backend_fails_the_batch_not_the_engine() {
    let engine = start(256, cfg());
    let bad = collect(
        engine
            .submit(request("bad", vec![1, PANIC, 2], greedy(4)))
            .unwrap(),
    )
    .await;
    assert!(matches!(bad.end, EngineEvent::Failed { .. }), "{bad:?}");
    let good = collect(
        engine
            .submit(request("good", prompt(2, 6), greedy(4)))
            .unwrap(),
    )
    .await;
    assert_eq!(good.tokens.len(), 4);
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let engine = start(8, cfg()); // 8 blocks of 4: a 32-token context
    assert_eq!(engine.max_model_len(), 32);
    let too_long = engine.submit(request("a", prompt(1, 32), greedy(4)));
    assert_eq!(
        too_long.err(),
        Some(SubmitError::PromptTooLong {
            tokens: 32,
            max: 32
        })
    );
    let out_of_vocab = engine.submit(request("a", vec![1, VOCAB as u32], greedy(4)));
    assert!(matches!(out_of_vocab, Err(SubmitError::Invalid(_))));
    let bad_params = engine.submit(request(
        "a",
        vec![1],
        SamplingParams {
            top_p: 2.0,
            ..greedy(4)
        },
    ));
    assert!(matches!(bad_params, Err(SubmitError::Invalid(_))));
    let _running = engine.submit(request("dup", vec![1], greedy(4))).unwrap();
    assert!(matches!(
        engine.submit(request("dup", vec![1], greedy(4))),
        Err(SubmitError::Invalid(_))
    ));
    engine.shutdown();
    assert_eq!(
        engine.submit(request("z", vec![1], greedy(4))).err(),
        Some(SubmitError::Shutdown)
    );
}

#[tokio::test]
async fn context_length_ends_generation() {
    let engine = start(4, cfg()); // a 16-token context
    let outcome = collect(
        engine
            .submit(request("ctx", prompt(1, 10), greedy(100)))
            .unwrap(),
    )
    .await;
    assert_eq!(outcome.tokens.len(), 6);
    assert!(matches!(
        outcome.end,
        EngineEvent::Finished {
            reason: FinishReason::Length,
            ..
        }
    ));
}

#[tokio::test]
async fn block_hashes_of_a_running_request_can_be_queried() {
    let engine = start_slow();
    let p = prompt(4, 13);
    let mut stream = engine
        .submit(request("h", p.clone(), greedy(3000)))
        .unwrap();
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .unwrap()
        .unwrap();
    let hashes = engine.kv_block_hashes("h").await.unwrap();
    assert_eq!(hashes[..3], block_hashes(&p, BLOCK_SIZE)[..]);
    assert!(engine.kv_block_hashes("nope").await.is_err());
}

#[test]
fn exported_blocks_import_into_an_equal_backend() {
    // The test backend's KV is real bytes; check its own round trip so the tests above rely on
    // a sound fake.
    let mut a = RollingBackend::new(4);
    let table = [2u32, 0];
    let step = SeqStep {
        tokens: &[1, 2, 3, 4, 5],
        start_pos: 0,
        block_table: &table,
        want_logits: true,
    };
    let logits_a = a.forward(&[step]).unwrap();
    let mut bytes = Vec::new();
    a.export_blocks(&table, &mut bytes).unwrap();
    let mut b = RollingBackend::new(4);
    b.import_blocks(&[1, 3], &bytes).unwrap();
    let next = SeqStep {
        tokens: &[6],
        start_pos: 5,
        block_table: &[1, 3],
        want_logits: true,
    };
    let again = SeqStep {
        tokens: &[6],
        start_pos: 5,
        block_table: &table,
        want_logits: true,
    };
    assert_eq!(
        b.forward(&[next]).unwrap().data,
        a.forward(&[again]).unwrap().data
    );
    assert_ne!(
        logits_a.data,
        b.forward(&[SeqStep {
            tokens: &[6],
            start_pos: 5,
            block_table: &[0, 2],
            want_logits: true
        }])
        .unwrap()
        .data
    );
}

#[test]
fn handles_and_streams_can_move_into_async_tasks() {
    fn shareable<T: Send + Sync + Clone>() {}
    fn movable<T: Send>() {}
    shareable::<EngineHandle>();
    movable::<EventStream>();
}

#[tokio::test]
async fn dropping_every_handle_stops_the_engine_thread() {
    let (alive, engine_gone) = mpsc::channel::<()>();
    let backend = RollingBackend {
        _alive: Some(alive),
        ..RollingBackend::new(64)
    };
    let engine = Engine::start(Box::new(backend), cfg(), vec![]);
    let stream = engine
        .submit(request("last", prompt(1, 5), greedy(5)))
        .unwrap();
    drop(engine);
    // The request still in flight completes without a handle.
    assert_eq!(collect(stream).await.tokens.len(), 5);
    let ended = engine_gone.recv_timeout(DEADLINE);
    assert_eq!(ended, Err(mpsc::RecvTimeoutError::Disconnected));
}
