//! Router decision time (issue 5, benchmark 2a): 64 workers, at least 100k indexed blocks,
//! prompts of 1–4k tokens that share system-prompt prefixes.
//!
//! cargo run --release -p stator --example router_bench -- [DECISIONS] [JSON_OUT]
//!
//! Times `Router::route` (the decision the frontend makes under its lock: prefix walk, costs,
//! pick) and, separately, hashing the prompt's blocks (done before taking the lock).

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stator::router::{Load, Router, RouterConfig};
use stator_gpu::kv::{block_hashes, KvEvent};
use stator_raft::model::{WorkerId, WorkerRole};

const WORKERS: u64 = 64;
const TARGET_BLOCKS: usize = 100_000;
const SYSTEM_PROMPTS: usize = 48;
const BLOCK: usize = 16;
const VOCAB: u32 = 49_152;

struct Scenario {
    name: &'static str,
    prefill_workers: u64,
}

fn tokens(rng: &mut StdRng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.gen_range(0..VOCAB)).collect()
}

/// A request: one of the shared system prompts, then its own text, 1–4k tokens in all.
fn prompt(rng: &mut StdRng, systems: &[Vec<u32>]) -> Vec<u32> {
    let system = &systems[rng.gen_range(0..systems.len())];
    let total = rng.gen_range(1024..=4096).max(system.len() + 16);
    let mut p = system.clone();
    p.extend(tokens(rng, total - system.len()));
    p
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Summary {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

fn summarize(mut us: Vec<f64>) -> Summary {
    us.sort_by(f64::total_cmp);
    Summary {
        p50: percentile(&us, 0.50),
        p90: percentile(&us, 0.90),
        p99: percentile(&us, 0.99),
        max: us[us.len() - 1],
        mean: us.iter().sum::<f64>() / us.len() as f64,
    }
}

fn run(s: &Scenario, decisions: usize) -> serde_json::Value {
    let mut rng = StdRng::seed_from_u64(5);
    let mut router = Router::new(RouterConfig {
        block_size: BLOCK,
        ..RouterConfig::default()
    });
    let ids: Vec<WorkerId> = (1..=WORKERS)
        .map(|node| WorkerId { node, slot: 0 })
        .collect();
    router.set_workers(ids.iter().map(|id| {
        let role = if id.node <= s.prefill_workers {
            WorkerRole::Prefill
        } else if s.prefill_workers > 0 {
            WorkerRole::Decode
        } else {
            WorkerRole::Aggregated
        };
        (*id, role)
    }));
    let systems: Vec<Vec<u32>> = (0..SYSTEM_PROMPTS)
        .map(|_| {
            let len = rng.gen_range(16..=128) * BLOCK;
            tokens(&mut rng, len)
        })
        .collect();
    // Fill the caches: each worker computed a stream of past prompts, until the index holds
    // the target number of distinct blocks.
    let mut stored_events = 0usize;
    while router.indexed_blocks() < TARGET_BLOCKS {
        let worker = ids[rng.gen_range(0..ids.len())];
        let p = prompt(&mut rng, &systems);
        router.apply_kv_event(
            worker,
            &KvEvent::Stored {
                hashes: block_hashes(&p, BLOCK),
            },
        );
        stored_events += 1;
    }
    for id in &ids {
        let load = Load {
            active_blocks: rng.gen_range(0..4000),
            queue_depth: rng.gen_range(0..4),
        };
        router.set_load(*id, load);
    }
    let mut route_us = Vec::with_capacity(decisions);
    let mut hash_us = Vec::with_capacity(decisions);
    let mut cached_tokens = 0usize;
    let mut prompt_tokens = 0usize;
    let mut remote_prefill = 0usize;
    // Requests finish in order a while after they start, so in-flight accounting stays bounded.
    let mut in_flight = std::collections::VecDeque::new();
    for _ in 0..decisions {
        let p = prompt(&mut rng, &systems);
        let uniform: f64 = rng.gen();
        let t0 = Instant::now();
        let hashes = block_hashes(&p, BLOCK);
        let t1 = Instant::now();
        let decision = router.route(&hashes, p.len(), uniform);
        let t2 = Instant::now();
        let Ok(decision) = decision else {
            panic!("no decision with {WORKERS} workers");
        };
        hash_us.push((t1 - t0).as_secs_f64() * 1e6);
        route_us.push((t2 - t1).as_secs_f64() * 1e6);
        cached_tokens += decision.cached_tokens;
        prompt_tokens += p.len();
        remote_prefill += usize::from(decision.prefill.is_some());
        in_flight.push_back((decision, p.len()));
        if in_flight.len() > 256 {
            if let Some((d, len)) = in_flight.pop_front() {
                router.release(&d, len);
            }
        }
    }
    let route = summarize(route_us);
    let hash = summarize(hash_us);
    println!(
        "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        s.name,
        decisions,
        router.indexed_blocks(),
        route.p50,
        route.p90,
        route.p99,
        route.max,
        hash.p50,
        hash.p99,
        100.0 * cached_tokens as f64 / prompt_tokens as f64,
    );
    serde_json::json!({
        "scenario": s.name,
        "workers": WORKERS,
        "prefill_workers": s.prefill_workers,
        "indexed_blocks": router.indexed_blocks(),
        "stored_prompts": stored_events,
        "system_prompts": SYSTEM_PROMPTS,
        "block_size": BLOCK,
        "prompt_tokens": "uniform 1024..=4096, system prefix 256..=2048",
        "decisions": decisions,
        "route_us": {"p50": route.p50, "p90": route.p90, "p99": route.p99, "max": route.max, "mean": route.mean},
        "block_hashing_us": {"p50": hash.p50, "p90": hash.p90, "p99": hash.p99, "max": hash.max, "mean": hash.mean},
        "cached_token_share": cached_tokens as f64 / prompt_tokens as f64,
        "remote_prefill_share": remote_prefill as f64 / decisions as f64,
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let decisions: usize = args
        .next()
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("DECISIONS must be a number, got {a}"))
        })
        .unwrap_or(20_000);
    let out = args.next();
    println!("| scenario | decisions | indexed blocks | route p50 µs | p90 | p99 | max | hashing p50 µs | p99 | cached % |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let results: Vec<serde_json::Value> = [
        Scenario {
            name: "aggregated-64",
            prefill_workers: 0,
        },
        Scenario {
            name: "disagg-16p-48d",
            prefill_workers: 16,
        },
    ]
    .iter()
    .map(|s| run(s, decisions))
    .collect();
    let report = serde_json::json!({
        "benchmark": "router decision time (issue 5, #2)",
        "command": format!("cargo run --release -p stator --example router_bench -- {decisions}{}", out.as_ref().map(|o| format!(" {o}")).unwrap_or_default()),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())),
        "results": results,
    });
    if let Some(path) = out {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
}
