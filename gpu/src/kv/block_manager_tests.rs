use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

fn tokens(range: std::ops::Range<u32>) -> Vec<u32> {
    range.collect()
}

/// Allocates and "computes" the whole of `toks` for `seq`, returning the cached token count.
fn run_prefill(bm: &mut BlockManager, seq: SeqId, toks: &[u32]) -> usize {
    let cached = bm.allocate(seq, toks, toks.len()).expect("allocate");
    bm.mark_computed(seq, toks).expect("mark");
    bm.check_invariants().expect("invariants");
    cached
}

#[test]
fn shared_prefix_reuses_the_same_blocks() {
    let mut bm = BlockManager::new(16, 4, true).unwrap();
    let a = tokens(0..10);
    assert_eq!(run_prefill(&mut bm, 1, &a), 0);
    let mut b = tokens(0..8);
    b.extend([77, 78, 79]);
    assert_eq!(run_prefill(&mut bm, 2, &b), 8);
    assert_eq!(
        bm.block_table(2).unwrap()[..2],
        bm.block_table(1).unwrap()[..2]
    );
    assert_ne!(bm.block_table(2).unwrap()[2], bm.block_table(1).unwrap()[2]);
    assert_eq!(bm.seq_block_hashes(2).unwrap(), &block_hashes(&b, 4)[..]);
    let stats = bm.stats();
    assert_eq!(stats.used_blocks, 3 + 1);
    assert_eq!(stats.prefix_hit_tokens, 8);
    assert_eq!(stats.prefix_query_tokens, 21);
}

#[test]
fn fully_cached_prompt_still_computes_its_last_token() {
    let mut bm = BlockManager::new(8, 4, true).unwrap();
    let prompt = tokens(0..8);
    run_prefill(&mut bm, 1, &prompt);
    bm.free(1);
    // Both blocks are cached, but the last token must run to produce logits.
    assert_eq!(bm.cached_prefix_tokens(&prompt), 4);
    assert_eq!(run_prefill(&mut bm, 2, &prompt), 4);
}

#[test]
fn freed_cached_blocks_are_reused_after_release_and_evicted_lru() {
    let mut bm = BlockManager::new(4, 2, true).unwrap();
    run_prefill(&mut bm, 1, &[1, 1, 2, 2]);
    bm.free(1);
    run_prefill(&mut bm, 2, &[3, 3, 4, 4]);
    bm.free(2);
    bm.drain_events();
    assert_eq!(bm.stats().cached_free_blocks, 4);
    // Needs 2 blocks: the least recently released are the tail-first release of seq 1.
    run_prefill(&mut bm, 3, &[5, 5, 6, 6]);
    let evicted = block_hashes(&[1, 1, 2, 2], 2);
    let events = bm.drain_events();
    assert_eq!(
        events[0],
        KvEvent::Removed {
            hashes: vec![evicted[1], evicted[0]]
        }
    );
    assert!(matches!(&events[1], KvEvent::Stored { hashes } if hashes.len() == 2));
    assert_eq!(bm.cached_prefix_tokens(&[1, 1, 2, 2, 9]), 0);
    assert_eq!(bm.cached_prefix_tokens(&[3, 3, 4, 4, 9]), 4);
}

#[test]
fn out_of_blocks_changes_nothing() {
    let mut bm = BlockManager::new(3, 2, true).unwrap();
    run_prefill(&mut bm, 1, &[1, 2, 3, 4]);
    let before = bm.stats();
    let err = bm.allocate(2, &[9, 9, 9, 9], 4).unwrap_err();
    assert_eq!(
        err,
        KvError::OutOfBlocks {
            needed: 2,
            available: 1
        }
    );
    assert_eq!(
        bm.grow(1, 10).unwrap_err(),
        KvError::OutOfBlocks {
            needed: 3,
            available: 1
        }
    );
    assert_eq!(bm.stats(), before);
    assert!(bm.block_table(2).is_none());
    bm.check_invariants().unwrap();
}

#[test]
fn reviving_a_cached_block_does_not_count_it_as_available() {
    let mut bm = BlockManager::new(2, 2, true).unwrap();
    run_prefill(&mut bm, 1, &[1, 2, 3]);
    bm.free(1);
    // Prefix [1,2] is cached in one of the 2 free blocks; the rest needs 2 more: only 1 left.
    assert!(matches!(
        bm.allocate(2, &[1, 2, 3, 4, 5], 5),
        Err(KvError::OutOfBlocks { .. })
    ));
    assert_eq!(bm.allocate(2, &[1, 2, 3, 4], 4), Ok(2));
    bm.check_invariants().unwrap();
}

#[test]
fn disabled_prefix_caching_never_hits_or_emits() {
    let mut bm = BlockManager::new(8, 2, false).unwrap();
    run_prefill(&mut bm, 1, &[1, 2, 3, 4, 5]);
    bm.free(1);
    assert_eq!(run_prefill(&mut bm, 2, &[1, 2, 3, 4, 5]), 0);
    assert!(bm.drain_events().is_empty());
    assert_eq!(bm.stats().cached_free_blocks, 0);
}

#[test]
fn zero_block_size_is_rejected() {
    assert_eq!(
        BlockManager::new(4, 0, true).err(),
        Some(KvError::ZeroBlockSize)
    );
}

/// Random allocate/grow/compute/free sequences keep every invariant, and every prefix hit is
/// exactly the blocks that hold that prefix's content.
#[test]
fn random_operations_keep_invariants() {
    for seed in 0..40u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let block_size = rng.gen_range(1..5);
        let mut bm = BlockManager::new(rng.gen_range(4..24), block_size, true).unwrap();
        // Block content as the "device" would hold it: the tokens written into each block.
        let mut content: Vec<Vec<u32>> = vec![Vec::new(); bm.num_blocks()];
        let mut live: Vec<(SeqId, Vec<u32>, usize)> = Vec::new();
        for step in 0..300u64 {
            match rng.gen_range(0..4) {
                0 => {
                    // Small alphabet so that prefixes collide often.
                    let len = rng.gen_range(1..4 * block_size + 3);
                    let toks: Vec<u32> = (0..len).map(|_| rng.gen_range(0..2)).collect();
                    let want = rng.gen_range(1..=len);
                    let expect_hit = bm.cached_prefix_tokens(&toks);
                    if let Ok(cached) = bm.allocate(step, &toks, want.max(expect_hit)) {
                        assert_eq!(cached, expect_hit);
                        let table = bm.block_table(step).unwrap();
                        for (i, &block) in table.iter().take(cached / block_size).enumerate() {
                            assert_eq!(
                                content[block as usize],
                                toks[i * block_size..(i + 1) * block_size],
                                "seed {seed}: hit returned a block with other content"
                            );
                        }
                        live.push((step, toks, cached));
                    }
                }
                1 if !live.is_empty() => {
                    let i = rng.gen_range(0..live.len());
                    let (seq, toks, computed) = &mut live[i];
                    let target = rng.gen_range(*computed..=toks.len());
                    if bm.grow(*seq, target).is_ok() {
                        let table = bm.block_table(*seq).unwrap().to_vec();
                        for pos in *computed..target {
                            let block = &mut content[table[pos / block_size] as usize];
                            block.truncate(pos % block_size);
                            block.push(toks[pos]);
                        }
                        *computed = target;
                        bm.mark_computed(*seq, &toks[..target]).unwrap();
                    }
                }
                2 if !live.is_empty() => {
                    let i = rng.gen_range(0..live.len());
                    assert!(bm.free(live.swap_remove(i).0));
                }
                _ => {}
            }
            if let Err(e) = bm.check_invariants() {
                panic!("seed {seed} step {step}: {e}");
            }
        }
    }
}

#[test]
fn a_reservation_reuses_cached_blocks_and_takes_fresh_ones_for_the_rest() {
    let mut bm = BlockManager::new(16, 4, true).unwrap();
    run_prefill(&mut bm, 1, &tokens(0..9));
    bm.free(1);
    // Blocks 0 and 1 are cached; a reservation for 4 full blocks (plus a partial tail that
    // it ignores) takes them and two fresh ones.
    let cached = bm.reserve(2, &tokens(0..18)).expect("reserve");
    assert_eq!(cached, 2);
    assert_eq!(bm.block_table(2).unwrap().len(), 4);
    bm.check_invariants().unwrap();
    // Its last block may be a hit, unlike a running sequence's.
    let mut bm = BlockManager::new(8, 4, true).unwrap();
    run_prefill(&mut bm, 1, &tokens(0..9));
    bm.free(1);
    assert_eq!(bm.reserve(2, &tokens(0..8)).unwrap(), 2);
}

#[test]
fn a_reservation_that_does_not_fit_changes_nothing() {
    let mut bm = BlockManager::new(4, 4, true).unwrap();
    run_prefill(&mut bm, 1, &tokens(0..8));
    bm.drain_events();
    let before = bm.stats();
    let err = bm.reserve(2, &tokens(100..120)).unwrap_err();
    assert_eq!(
        err,
        KvError::OutOfBlocks {
            needed: 5,
            available: 2
        }
    );
    assert!(!bm.contains(2));
    assert_eq!(bm.stats(), before);
    assert!(!bm.has_events(), "nothing evicted by a refused reservation");
    bm.check_invariants().unwrap();
}

#[test]
fn a_completed_reservation_serves_the_prompt_prefix_to_a_sequence() {
    let mut bm = BlockManager::new(16, 4, true).unwrap();
    let prompt = tokens(0..11);
    // The transferable part: full blocks of the prompt minus its last token.
    let transferable = &prompt[..8];
    assert_eq!(bm.reserve(7, transferable).unwrap(), 0);
    bm.mark_computed(7, transferable).unwrap();
    assert_eq!(
        bm.drain_events(),
        vec![KvEvent::Stored {
            hashes: block_hashes(transferable, 4)
        }]
    );
    let cached = bm.allocate(1, &prompt, prompt.len()).unwrap();
    assert_eq!(cached, 8);
    assert_eq!(
        bm.block_table(1).unwrap()[..2],
        bm.block_table(7).unwrap()[..]
    );
    bm.free(7);
    bm.check_invariants().unwrap();
    assert_eq!(bm.stats().used_blocks, 3);
}

#[test]
fn a_reservation_freed_before_completion_leaves_nothing_cached() {
    let mut bm = BlockManager::new(8, 4, true).unwrap();
    bm.reserve(7, &tokens(0..8)).unwrap();
    assert!(bm.free(7));
    bm.check_invariants().unwrap();
    let stats = bm.stats();
    assert_eq!((stats.used_blocks, stats.cached_free_blocks), (0, 0));
    assert_eq!(bm.cached_prefix_tokens(&tokens(0..9)), 0);
}
