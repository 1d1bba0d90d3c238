use super::*;

fn w(node: u64) -> WorkerId {
    WorkerId { node, slot: 0 }
}
fn hashes(n: u64) -> Vec<BlockHash> {
    (0..n).map(BlockHash).collect()
}
fn router(workers: &[(u64, WorkerRole)]) -> Router {
    let mut r = Router::new(RouterConfig::default());
    r.set_workers(workers.iter().map(|(n, role)| (w(*n), *role)));
    r
}

#[test]
fn aggregated_cluster_prefers_the_worker_holding_the_prefix() {
    let mut r = router(&[(1, WorkerRole::Aggregated), (2, WorkerRole::Aggregated)]);
    r.apply_kv_event(w(2), &KvEvent::Stored { hashes: hashes(30) });
    let d = r.route(&hashes(32), 32 * 16, 0.0).unwrap();
    assert_eq!(d.decode, w(2));
    assert_eq!(d.prefill, None);
    assert_eq!(d.cached_tokens, 30 * 16);
}

#[test]
fn load_outweighs_a_small_prefix_hit() {
    let mut r = router(&[(1, WorkerRole::Aggregated), (2, WorkerRole::Aggregated)]);
    r.apply_kv_event(w(2), &KvEvent::Stored { hashes: hashes(2) });
    r.set_load(
        w(2),
        Load {
            active_blocks: 500,
            queue_depth: 0,
        },
    );
    assert_eq!(r.route(&hashes(32), 512, 0.0).unwrap().decode, w(1));
}

#[test]
fn long_uncached_prompts_go_to_a_prefill_worker_short_ones_stay_local() {
    let mut r = router(&[
        (1, WorkerRole::Decode),
        (2, WorkerRole::Decode),
        (3, WorkerRole::Prefill),
    ]);
    let long = r.route(&hashes(64), 64 * 16, 0.0).unwrap();
    assert_eq!(long.prefill, Some(w(3)));
    assert_eq!(long.why, "disaggregated");
    let short = r.route(&hashes(4), 4 * 16 + 3, 0.0).unwrap();
    assert_eq!(short.prefill, None);
    assert_eq!(short.why, "short uncached prompt");
}

#[test]
fn a_prompt_cached_on_the_decode_worker_is_not_sent_to_prefill() {
    let mut r = router(&[(1, WorkerRole::Decode), (3, WorkerRole::Prefill)]);
    r.apply_kv_event(w(1), &KvEvent::Stored { hashes: hashes(60) });
    let d = r.route(&hashes(64), 64 * 16, 0.0).unwrap();
    assert_eq!(d.decode, w(1));
    assert_eq!(d.prefill, None, "only 4 blocks (64 tokens) are uncached");
}

#[test]
fn saturated_prefill_workers_mean_local_prefill() {
    let mut r = router(&[(1, WorkerRole::Decode), (3, WorkerRole::Prefill)]);
    r.set_load(
        w(3),
        Load {
            active_blocks: 0,
            queue_depth: 100,
        },
    );
    let d = r.route(&hashes(64), 64 * 16, 0.0).unwrap();
    assert_eq!(d.prefill, None);
    assert_eq!(d.why, "prefill workers saturated");
}

#[test]
fn prefill_choice_weighs_overlap_against_load() {
    let mut r = router(&[
        (1, WorkerRole::Decode),
        (3, WorkerRole::Prefill),
        (4, WorkerRole::Prefill),
    ]);
    r.apply_kv_event(w(4), &KvEvent::Stored { hashes: hashes(40) });
    assert_eq!(
        r.route(&hashes(64), 64 * 16, 0.0).unwrap().prefill,
        Some(w(4))
    );
    // Enough load on 4 to outweigh 40 cached blocks.
    r.set_load(
        w(4),
        Load {
            active_blocks: 1000,
            queue_depth: 0,
        },
    );
    assert_eq!(
        r.route(&hashes(64), 64 * 16, 0.0).unwrap().prefill,
        Some(w(3))
    );
}

#[test]
fn in_flight_accounting_spreads_a_burst_until_load_reports_arrive() {
    let mut r = router(&[(1, WorkerRole::Aggregated), (2, WorkerRole::Aggregated)]);
    let a = r.route(&hashes(8), 128, 0.0).unwrap();
    let b = r.route(&hashes(8), 128, 0.0).unwrap();
    assert_ne!(
        a.decode, b.decode,
        "the second request sees the first one's blocks"
    );
    r.release(&a, 128);
    r.release(&b, 128);
    // Both released: the tie goes back to the lowest id.
    assert_eq!(r.route(&hashes(8), 128, 0.0).unwrap().decode, w(1));
}

#[test]
fn releasing_a_disaggregated_request_frees_its_prefill_worker_too() {
    let mut r = router(&[
        (1, WorkerRole::Decode),
        (3, WorkerRole::Prefill),
        (4, WorkerRole::Prefill),
    ]);
    let first = r.route(&hashes(64), 64 * 16, 0.0).unwrap();
    assert_eq!(first.prefill, Some(w(3)));
    let second = r.route(&hashes(64), 64 * 16, 0.0).unwrap();
    assert_eq!(
        second.prefill,
        Some(w(4)),
        "3 is busy with the first prompt"
    );
    r.release(&first, 64 * 16);
    r.release(&second, 64 * 16);
    let third = r.route(&hashes(64), 64 * 16, 0.0).unwrap();
    assert_eq!(
        third.prefill,
        Some(w(3)),
        "both prefill workers were released"
    );
}

#[test]
fn a_stale_load_report_is_forgotten_but_own_accounting_stays() {
    let mut r = router(&[(1, WorkerRole::Aggregated), (2, WorkerRole::Aggregated)]);
    r.set_load(
        w(1),
        Load {
            active_blocks: 1000,
            queue_depth: 0,
        },
    );
    assert_eq!(r.route(&hashes(8), 128, 0.0).unwrap().decode, w(2));
    r.forget_load(w(1));
    // 2 still carries this frontend's 8 pending blocks; 1 has none now.
    assert_eq!(r.route(&hashes(8), 128, 0.0).unwrap().decode, w(1));
}

#[test]
fn real_prompt_hashes_steer_a_shared_system_prompt_to_its_holder() {
    use stator_gpu::kv::block_hashes;
    let system: Vec<u32> = (0..1024).map(|t| t * 7 % 5000).collect();
    let mut cached = system.clone();
    cached.extend(100..164);
    let mut r = router(&[
        (1, WorkerRole::Aggregated),
        (2, WorkerRole::Aggregated),
        (3, WorkerRole::Aggregated),
    ]);
    r.apply_kv_event(
        w(3),
        &KvEvent::Stored {
            hashes: block_hashes(&cached, 16),
        },
    );
    // Same system prompt, different question: 64 of its 68 full blocks are cached on 3.
    let mut prompt = system.clone();
    prompt.extend(9000..9070);
    let d = r
        .route(&block_hashes(&prompt, 16), prompt.len(), 0.0)
        .unwrap();
    assert_eq!(d.decode, w(3));
    assert_eq!(d.cached_tokens, 1024);
    // A prompt with a different first token shares no block with it.
    let mut other = prompt.clone();
    other[0] += 1;
    let d = r
        .route(&block_hashes(&other, 16), other.len(), 0.0)
        .unwrap();
    assert_eq!(d.cached_tokens, 0);
    assert_ne!(
        d.decode,
        w(3),
        "3 carries the first request's pending blocks"
    );
}

#[test]
fn no_decode_worker_is_a_clear_error() {
    let mut r = router(&[(3, WorkerRole::Prefill)]);
    assert_eq!(
        r.route(&hashes(4), 64, 0.0),
        Err(RouteError::NoDecodeWorker)
    );
    let mut empty = router(&[]);
    assert_eq!(empty.route(&[], 0, 0.0), Err(RouteError::NoDecodeWorker));
}

#[test]
fn the_index_follows_the_feed_not_the_routable_set() {
    let mut r = router(&[(1, WorkerRole::Aggregated), (2, WorkerRole::Aggregated)]);
    r.apply_kv_event(w(2), &KvEvent::Stored { hashes: hashes(10) });
    // 2 drains for a moment: not routable, but its cache is still there when it comes back.
    r.set_workers([(w(1), WorkerRole::Aggregated)]);
    assert_eq!(r.route(&hashes(10), 160, 0.0).unwrap().decode, w(1));
    r.set_workers([
        (w(1), WorkerRole::Aggregated),
        (w(2), WorkerRole::Aggregated),
    ]);
    let d = r.route(&hashes(10), 160, 0.0).unwrap();
    assert_eq!((d.decode, d.cached_tokens), (w(2), 160));
    // The feed of 2 broke: its blocks are forgotten.
    r.clear_kv(w(2));
    assert_eq!(r.indexed_blocks(), 0);
    assert_eq!(r.route(&hashes(10), 160, 0.0).unwrap().cached_tokens, 0);
}

#[test]
fn softmax_sampling_spreads_choices_between_equal_workers() {
    let mut r = Router::new(RouterConfig {
        temperature: 1.0,
        ..Default::default()
    });
    r.set_workers([
        (w(1), WorkerRole::Aggregated),
        (w(2), WorkerRole::Aggregated),
    ]);
    let low = r.route(&hashes(1), 16, 0.1).unwrap().decode;
    let mut r2 = Router::new(RouterConfig {
        temperature: 1.0,
        ..Default::default()
    });
    r2.set_workers([
        (w(1), WorkerRole::Aggregated),
        (w(2), WorkerRole::Aggregated),
    ]);
    let high = r2.route(&hashes(1), 16, 0.9).unwrap().decode;
    assert_ne!(low, high);
}
