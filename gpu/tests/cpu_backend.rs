//! CPU backend behaviour: batching, chunked prefill, paging and KV transfer must not change
//! what the model computes; bad input is rejected without touching the cache.

mod cpu_common;

use cpu_common::*;
use stator_gpu::backend::cpu::CpuBackend;
use stator_gpu::backend::{Backend, BackendError, SeqStep};
use stator_gpu::random_weights::random_weights;

/// Different batch shapes run different gemm tilings, so batched and solo results may differ
/// in the last bits of f32 accumulation, never by more than this.
const BATCH_TOLERANCE: f32 = 1e-5;

#[test]
fn batched_forward_of_three_sequences_equals_running_each_alone() {
    let vocab = tiny_config().vocab_size;
    let prompts = [
        tokens(5, 1, vocab),
        tokens(17, 2, vocab),
        tokens(1, 3, vocab),
    ];
    let tables: [Vec<u32>; 3] = [vec![0, 1], vec![2, 3, 4, 5, 6], vec![7]];

    let mut batched = tiny_backend(8);
    let prefill: Vec<SeqStep> = prompts
        .iter()
        .zip(&tables)
        .map(|(p, t)| SeqStep {
            tokens: p,
            start_pos: 0,
            block_table: t,
            want_logits: true,
        })
        .collect();
    let prefill_logits = rows(&batched.forward(&prefill).unwrap());
    let next: Vec<[u32; 1]> = prefill_logits.iter().map(|r| [argmax(r)]).collect();
    let decode: Vec<SeqStep> = (0..3)
        .map(|i| SeqStep {
            tokens: &next[i],
            start_pos: prompts[i].len(),
            block_table: &tables[i],
            want_logits: true,
        })
        .collect();
    let decode_logits = rows(&batched.forward(&decode).unwrap());

    for i in 0..3 {
        let mut alone = tiny_backend(8);
        let solo_prefill = step(&mut alone, &prompts[i], 0, &tables[i]);
        let solo_decode = step(&mut alone, &next[i], prompts[i].len(), &tables[i]);
        assert!(
            relative_error(&prefill_logits[i], &solo_prefill) < BATCH_TOLERANCE,
            "prefill of sequence {i}"
        );
        assert!(
            relative_error(&decode_logits[i], &solo_decode) < BATCH_TOLERANCE,
            "decode of sequence {i}"
        );
    }
}

#[test]
fn only_steps_that_want_logits_get_a_row_in_batch_order() {
    let vocab = tiny_config().vocab_size;
    let (a, b) = (tokens(6, 4, vocab), tokens(3, 5, vocab));
    let mut backend = tiny_backend(8);
    let logits = backend
        .forward(&[
            SeqStep {
                tokens: &a,
                start_pos: 0,
                block_table: &[0, 1],
                want_logits: false,
            },
            SeqStep {
                tokens: &b,
                start_pos: 0,
                block_table: &[2],
                want_logits: true,
            },
        ])
        .unwrap();
    assert_eq!(logits.rows(), 1);
    let mut alone = tiny_backend(8);
    assert!(relative_error(logits.row(0), &step(&mut alone, &b, 0, &[2])) < BATCH_TOLERANCE);
}

#[test]
fn prefill_in_three_chunks_equals_one_shot_prefill() {
    let prompt = tokens(45, 6, tiny_config().vocab_size);
    let table: Vec<u32> = (0..12).collect();

    let mut one_shot = tiny_backend(12);
    let expected = step(&mut one_shot, &prompt, 0, &table);

    let mut chunked = tiny_backend(12);
    let (first, rest) = prompt.split_at(13);
    let (second, third) = rest.split_at(15);
    chunked
        .forward(&[without_logits(first, 0, &table)])
        .unwrap();
    chunked
        .forward(&[without_logits(second, 13, &table)])
        .unwrap();
    let got = step(&mut chunked, third, 28, &table);
    assert!(relative_error(&got, &expected) < BATCH_TOLERANCE);

    // The KV written by the chunks must serve later decode steps the same way.
    let next = [argmax(&expected)];
    let after_one_shot = step(&mut one_shot, &next, 45, &table);
    let after_chunked = step(&mut chunked, &next, 45, &table);
    assert!(relative_error(&after_chunked, &after_one_shot) < BATCH_TOLERANCE);
}

fn without_logits<'a>(tokens: &'a [u32], start_pos: usize, table: &'a [u32]) -> SeqStep<'a> {
    SeqStep {
        tokens,
        start_pos,
        block_table: table,
        want_logits: false,
    }
}

#[test]
fn shuffled_block_ids_give_identical_logits() {
    let prompt = tokens(14, 7, tiny_config().vocab_size);
    let mut in_order = tiny_backend(10);
    let mut shuffled = tiny_backend(10);
    let (table_a, table_b) = ([0u32, 1, 2, 3, 4], [9u32, 2, 7, 0, 5]);
    assert_eq!(
        step(&mut in_order, &prompt, 0, &table_a),
        step(&mut shuffled, &prompt, 0, &table_b)
    );
    let mut token = [3u32];
    for pos in 14..19 {
        let a = step(&mut in_order, &token, pos, &table_a);
        assert_eq!(
            a,
            step(&mut shuffled, &token, pos, &table_b),
            "decode at position {pos}"
        );
        token = [argmax(&a)];
    }
}

#[test]
fn exported_blocks_imported_elsewhere_continue_the_sequence_identically() {
    let prompt = tokens(11, 8, tiny_config().vocab_size);
    let mut source = tiny_backend(8);
    let source_table = [3u32, 4, 5];
    let first = step(&mut source, &prompt, 0, &source_table);

    let mut bytes = Vec::new();
    source.export_blocks(&source_table, &mut bytes).unwrap();
    assert_eq!(bytes.len(), 3 * source.kv_layout().bytes_per_block());

    let mut target = tiny_backend(8);
    let target_table = [6u32, 0, 2];
    target.import_blocks(&target_table, &bytes).unwrap();
    let next = [argmax(&first)];
    assert_eq!(
        step(&mut target, &next, 11, &target_table),
        step(&mut source, &next, 11, &source_table)
    );
}

#[test]
fn a_prefix_shared_through_the_block_table_is_read_not_recomputed() {
    // Two sequences share a full first block holding the same 4 prompt tokens.
    let vocab = tiny_config().vocab_size;
    let prompt = tokens(9, 9, vocab);
    let mut backend = tiny_backend(8);
    let full = step(&mut backend, &prompt, 0, &[0, 1, 2]);
    let reused = step(&mut backend, &prompt[4..], 4, &[0, 5, 6]);
    assert!(relative_error(&reused, &full) < BATCH_TOLERANCE);
}

fn snapshot(backend: &CpuBackend) -> Vec<u8> {
    let all: Vec<u32> = (0..backend.num_kv_blocks() as u32).collect();
    let mut bytes = Vec::new();
    backend.export_blocks(&all, &mut bytes).unwrap();
    bytes
}

#[test]
fn invalid_batches_are_rejected_and_leave_the_cache_untouched() {
    let mut backend = tiny_backend(4);
    step(&mut backend, &[1, 2, 3], 0, &[0]);
    let before = snapshot(&backend);
    let good = [5u32, 6];
    let vocab = backend.config().vocab_size as u32;
    let (out_of_vocab, far_out_of_vocab) = ([1, vocab], [vocab + 7]);
    let cases: Vec<(&str, Vec<SeqStep>)> = vec![
        (
            "token outside vocab",
            vec![SeqStep {
                tokens: &out_of_vocab,
                start_pos: 0,
                block_table: &[1],
                want_logits: true,
            }],
        ),
        (
            "block table too short",
            vec![SeqStep {
                tokens: &good,
                start_pos: 3,
                block_table: &[1],
                want_logits: true,
            }],
        ),
        (
            "block id out of range",
            vec![SeqStep {
                tokens: &good,
                start_pos: 0,
                block_table: &[4],
                want_logits: true,
            }],
        ),
        (
            "position overflow",
            vec![SeqStep {
                tokens: &good,
                start_pos: usize::MAX,
                block_table: &[1],
                want_logits: true,
            }],
        ),
        (
            "empty step",
            vec![SeqStep {
                tokens: &[],
                start_pos: 0,
                block_table: &[1],
                want_logits: true,
            }],
        ),
        (
            "valid step followed by an invalid one",
            vec![
                SeqStep {
                    tokens: &good,
                    start_pos: 0,
                    block_table: &[2],
                    want_logits: true,
                },
                SeqStep {
                    tokens: &far_out_of_vocab,
                    start_pos: 0,
                    block_table: &[3],
                    want_logits: true,
                },
            ],
        ),
    ];
    for (what, batch) in cases {
        let err = backend.forward(&batch).expect_err(what);
        assert!(
            matches!(err, BackendError::InvalidBatch(_)),
            "{what}: {err}"
        );
        assert_eq!(snapshot(&backend), before, "{what} changed the cache");
    }
}

#[test]
fn kv_transfer_rejects_wrong_sizes_and_unknown_blocks_without_writing() {
    let mut backend = tiny_backend(4);
    step(&mut backend, &[1, 2, 3], 0, &[0]);
    let before = snapshot(&backend);
    let block_bytes = backend.kv_layout().bytes_per_block();

    let mut out = Vec::new();
    assert!(backend.export_blocks(&[0, 4], &mut out).is_err());
    assert!(out.is_empty(), "a failed export must not append");
    let err = backend
        .import_blocks(&[1], &vec![0u8; block_bytes - 1])
        .unwrap_err();
    assert!(matches!(err, BackendError::BadKvData(_)), "{err}");
    assert!(backend
        .import_blocks(&[1, 9], &vec![0u8; 2 * block_bytes])
        .is_err());
    assert_eq!(snapshot(&backend), before);
}

#[test]
fn memory_budget_sets_the_block_count_and_too_small_a_budget_is_an_error() {
    let config = tiny_config();
    let per_block = CpuBackend::layout_for(&config, BLOCK_SIZE).bytes_per_block();
    let backend = CpuBackend::with_memory_budget(
        config.clone(),
        random_weights(&config, 1),
        per_block * 10 + 5,
        BLOCK_SIZE,
    )
    .unwrap();
    assert_eq!(backend.num_kv_blocks(), 10);
    let err = CpuBackend::with_memory_budget(
        config.clone(),
        random_weights(&config, 1),
        per_block - 1,
        BLOCK_SIZE,
    );
    assert!(matches!(err, Err(BackendError::OutOfMemory(_))));
}

#[test]
fn weights_that_do_not_match_the_config_are_refused() {
    let config = tiny_config();
    let mut weights = random_weights(&config, 1);
    weights.layers[1].bq = None;
    assert!(CpuBackend::new(config.clone(), weights, 4, BLOCK_SIZE).is_err());
    let mut smaller = config.clone();
    smaller.intermediate_size /= 2;
    assert!(CpuBackend::new(smaller, random_weights(&config, 1), 4, BLOCK_SIZE).is_err());
}
