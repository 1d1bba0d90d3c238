//! KV transfer between two engines over the real CPU backend ("tiny" preset, random weights):
//! a prompt prefilled on one engine and imported into another must decode exactly as if the
//! second engine had computed it.

use std::time::Duration;

use super::*;
use crate::backend::cpu::CpuBackend;
use crate::presets::preset;
use crate::random_weights::random_weights;
use crate::request::SamplingParams;

const BLOCK_SIZE: usize = 16;
const DEADLINE: Duration = Duration::from_secs(60);

fn start(num_blocks: usize) -> EngineHandle {
    let config = preset("tiny").expect("tiny preset");
    let weights = random_weights(&config, 7);
    let backend = CpuBackend::new(config, weights, num_blocks, BLOCK_SIZE).expect("cpu backend");
    Engine::start(Box::new(backend), EngineConfig::default(), vec![])
}

fn tokens_of(len: usize, salt: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((salt * 53 + i * 17) % 250) as u32)
        .collect()
}

fn greedy(id: &str, prompt: Vec<u32>) -> GenerateRequest {
    GenerateRequest {
        id: id.into(),
        prompt,
        generated: vec![],
        params: SamplingParams {
            temperature: 0.0,
            max_tokens: 12,
            ..SamplingParams::default()
        },
    }
}

/// Output tokens and the cached prompt tokens the engine reported.
async fn collect(mut stream: EventStream) -> (Vec<u32>, usize) {
    let mut tokens = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("engine stalled")
            .expect("stream ended")
        {
            EngineEvent::Token { token, .. } => tokens.push(token),
            EngineEvent::Finished { cached_tokens, .. } => return (tokens, cached_tokens),
            EngineEvent::Failed { message } => panic!("request failed: {message}"),
        }
    }
}

/// The part of a prompt a decode engine asks for: full blocks of all but its last token.
fn transferable(prompt: &[u32]) -> Vec<u32> {
    let full = (prompt.len() - 1) / BLOCK_SIZE * BLOCK_SIZE;
    prompt[..full].to_vec()
}

async fn export(engine: &EngineHandle, id: &str, tokens: &[u32], from: usize) -> ExportedBlocks {
    let export = engine
        .prefill_export(id, tokens.to_vec(), from)
        .expect("prefill_export");
    tokio::time::timeout(DEADLINE, export.wait())
        .await
        .expect("export stalled")
        .expect("export")
}

async fn used_blocks_settle(engine: &EngineHandle, expected: usize) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while engine.stats().kv_blocks_used != expected {
        assert!(
            tokio::time::Instant::now() < give_up,
            "{} blocks still used, expected {expected}",
            engine.stats().kv_blocks_used
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_prefix_decodes_exactly_like_a_local_prefill() {
    let prompt = tokens_of(83, 1);
    let local = start(64);
    let (expected, _) = collect(local.submit(greedy("plain", prompt.clone())).unwrap()).await;

    let prefill = start(64);
    let decode = start(64);
    let part = transferable(&prompt);
    let reservation = decode.reserve_prefix(&part).await.expect("reserve");
    assert_eq!(
        (reservation.first_block(), reservation.total_blocks()),
        (0, 5)
    );
    let exported = export(&prefill, "p", &part, 0).await;
    assert_eq!(exported.num_blocks, 5);
    // Pipelined: two chunks as they would arrive from the network.
    let per_block = reservation.bytes_per_block();
    let (head, tail) = exported.bytes.split_at(2 * per_block);
    reservation
        .import(0, head.to_vec())
        .await
        .expect("import head");
    reservation
        .import(2, tail.to_vec())
        .await
        .expect("import tail");
    reservation.complete().await.expect("complete");
    let stream = decode
        .submit_with_prefix(greedy("d", prompt.clone()), reservation)
        .expect("submit");
    let (tokens, cached) = collect(stream).await;
    assert_eq!(tokens, expected);
    assert_eq!(
        cached,
        part.len(),
        "the request must use the imported blocks"
    );
    // The reservation was released at admission: only cached blocks remain.
    used_blocks_settle(&decode, 0).await;
    // 94 computed tokens: the 5 imported blocks, nothing private left behind.
    assert_eq!(decode.stats().kv_blocks_cached, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_bytes_equal_a_fresh_engines_and_skip_blocks_cached_downstream() {
    let part = transferable(&tokens_of(70, 2));
    let warm = start(64);
    // Warm the exporting engine's prefix cache with an unrelated request sharing 2 blocks.
    let mut other = part[..32].to_vec();
    other.extend(tokens_of(9, 5));
    collect(warm.submit(greedy("warm", other)).unwrap()).await;
    let from_warm = export(&warm, "a", &part, 0).await;
    let fresh = start(64);
    let from_fresh = export(&fresh, "b", &part, 0).await;
    assert_eq!(from_warm.num_blocks, 4);
    assert_eq!(from_warm.bytes.len(), from_fresh.bytes.len());
    // Other chunk boundaries change float summation order, not the values.
    let worst = max_difference(&from_warm.bytes, &from_fresh.bytes);
    assert!(worst < 1e-4, "exported KV differs by {worst}");
    assert!(
        from_fresh.bytes != fresh_zeros(from_fresh.bytes.len()),
        "exported KV is empty"
    );
    let again = export(&start(64), "b", &part, 0).await;
    assert!(
        again == from_fresh,
        "a fresh engine exports the same bytes every time"
    );
    let tail = export(&fresh, "c", &part, 3).await;
    assert_eq!(tail.first_block, 3);
    assert_eq!(tail.num_blocks, 1);
    let per_block = from_fresh.bytes.len() / 4;
    let worst = max_difference(&tail.bytes, &from_fresh.bytes[3 * per_block..]);
    assert!(worst < 1e-4, "exported tail differs by {worst}");
}

/// Largest difference between two equally long f32 buffers.
fn max_difference(a: &[u8], b: &[u8]) -> f32 {
    assert_eq!(a.len(), b.len());
    let floats = |bytes: &[u8]| -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    floats(a)
        .iter()
        .zip(floats(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn fresh_zeros(len: usize) -> Vec<u8> {
    vec![0; len]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_starts_after_the_locally_cached_blocks() {
    let prompt = tokens_of(83, 3);
    let decode = start(64);
    let mut shares_two_blocks = prompt[..32].to_vec();
    shares_two_blocks.extend(tokens_of(5, 9));
    collect(decode.submit(greedy("w", shares_two_blocks)).unwrap()).await;
    let reservation = decode.reserve_prefix(&transferable(&prompt)).await.unwrap();
    assert_eq!(reservation.first_block(), 2);
    assert_eq!(reservation.blocks_needed(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_is_all_or_nothing_and_dropping_it_frees_its_blocks() {
    let decode = start(8);
    let too_big = decode.reserve_prefix(&tokens_of(9 * BLOCK_SIZE, 4)).await;
    assert_eq!(
        too_big.unwrap_err(),
        TransferError::OutOfBlocks {
            needed: 9,
            available: 8
        }
    );
    used_blocks_settle(&decode, 0).await;
    let reservation = decode.reserve_prefix(&tokens_of(80, 4)).await.unwrap();
    used_blocks_settle(&decode, 5).await;
    drop(reservation);
    used_blocks_settle(&decode, 0).await;
    assert_eq!(
        decode.stats().kv_blocks_cached,
        0,
        "never-written blocks must not become a cached prefix"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunks_are_refused_and_change_nothing() {
    let decode = start(64);
    let reservation = decode.reserve_prefix(&tokens_of(64, 6)).await.unwrap();
    let per_block = reservation.bytes_per_block();
    let refused = |r: Result<(), TransferError>| matches!(r, Err(TransferError::BadChunk(_)));
    assert!(refused(reservation.import(0, vec![0; per_block - 1]).await));
    assert!(refused(reservation.import(0, Vec::new()).await));
    assert!(
        refused(reservation.import(1, vec![0; per_block]).await),
        "out of order"
    );
    assert!(
        refused(reservation.import(0, vec![0; 5 * per_block]).await),
        "past the end"
    );
    assert_eq!(
        reservation.complete().await,
        Err(TransferError::Incomplete { next: 0, total: 4 })
    );
    reservation.import(0, vec![0; 4 * per_block]).await.unwrap();
    reservation.complete().await.unwrap();
    assert!(refused(reservation.import(0, vec![0; per_block]).await));
    let bad_export = decode.prefill_export("x", tokens_of(20, 1), 0);
    assert!(matches!(bad_export, Err(SubmitError::Invalid(_))));
    let bad_export = decode.prefill_export("x", tokens_of(32, 1), 2);
    assert!(matches!(bad_export, Err(SubmitError::Invalid(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_reservation_handed_to_a_request_is_freed_and_it_prefills_locally() {
    let prompt = tokens_of(50, 7);
    let local = start(64);
    let (expected, _) = collect(local.submit(greedy("plain", prompt.clone())).unwrap()).await;
    let decode = start(64);
    let reservation = decode.reserve_prefix(&transferable(&prompt)).await.unwrap();
    let per_block = reservation.bytes_per_block();
    // Garbage for the first block only: never completed, so never used.
    reservation.import(0, vec![0xff; per_block]).await.unwrap();
    let stream = decode
        .submit_with_prefix(greedy("d", prompt.clone()), reservation)
        .unwrap();
    let (tokens, cached) = collect(stream).await;
    assert_eq!(cached, 0);
    assert_eq!(tokens, expected);
    used_blocks_settle(&decode, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_export_cancels_the_prefill() {
    let engine = start(64);
    let export = engine.prefill_export("gone", tokens_of(64, 8), 0).unwrap();
    drop(export);
    used_blocks_settle(&engine, 0).await;
    // The id is free again once the engine has forgotten the cancelled request.
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        match engine.prefill_export("gone", tokens_of(64, 8), 0) {
            Ok(export) => {
                tokio::time::timeout(DEADLINE, export.wait())
                    .await
                    .unwrap()
                    .unwrap();
                break;
            }
            Err(e) => {
                assert!(tokio::time::Instant::now() < give_up, "{e}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}
