//! In-flight migration: requests streamed through one peer run on other peers' workers under
//! Raft leases; when a worker's peer dies (SIGKILL) or freezes (SIGSTOP) its requests continue
//! on another worker and every client gets exactly the undisturbed greedy output.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use stator_tests::*;

const MODEL_NAME: &str = "SmolLM2-135M-Instruct";
const MAX_TOKENS: usize = 48;
const PROMPTS: [&str; 10] = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "To bake bread you need",
    "The largest planet in the solar system is",
    "A haiku about the sea:",
    "The quick brown fox",
    "In computer science, a hash table is",
    "The best way to learn a language is",
    "Water boils at",
];

/// Four peers with engines; p0 is the frontend the clients talk to (`--request-leases`).
fn start_cluster(root: &std::path::Path) -> Result<Vec<Peer>> {
    let model = default_model().display().to_string();
    let args = |frontend: bool| {
        let mut a: Vec<String> = [
            "--model",
            &model,
            "--kv-cache-mib",
            "128",
            "--replace-voter-after-s",
            "1",
            // Four engines share this machine's few cores: a peer busy decoding can miss the
            // default 300 ms, be marked Down, and lose its requests to a needless migration.
            "--down-after-ms",
            "800",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if frontend {
            a.push("--request-leases".into());
        }
        a
    };
    let peers = start_peers(
        root,
        (0..4).map(|i| args(i == 0)).collect(),
        Duration::from_secs(90),
    )?;
    wait_workers_registered(&peers, Duration::from_secs(60))?;
    Ok(peers)
}

fn stream_completion(url: String, prompt: &'static str, hang_up_after: Option<usize>) -> Stream {
    stator_tests::stream_completion(url, MODEL_NAME, prompt, MAX_TOKENS, hang_up_after)
}

fn start_all(frontend: &Peer) -> Vec<Stream> {
    PROMPTS
        .iter()
        .map(|p| stream_completion(frontend.url(), p, None))
        .collect()
}

fn finish_all(streams: Vec<Stream>) -> Vec<Seen> {
    streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| match s.handle.join() {
            Ok(Ok(seen)) => seen,
            Ok(Err(e)) => panic!("stream {i} ({:?}) failed: {e:#}", PROMPTS[i]),
            Err(_) => panic!("stream {i} panicked"),
        })
        .collect()
}

/// Sum of every sample of `name` on the peer's /metrics (0 when absent).
fn metric(peer: &Peer, name: &str) -> f64 {
    metric_sum(peer, name, "")
}

/// The samples of `name` on the peer's /metrics, for the test's output.
fn samples(peer: &Peer, name: &str) -> Vec<String> {
    let Ok((200, body)) = http_get(&format!("{}/metrics", peer.url()), None) else {
        return Vec::new();
    };
    body.lines()
        .filter(|l| l.starts_with(name))
        .map(str::to_string)
        .collect()
}

/// Waits until the streams have produced tokens, then picks the running non-frontend peer
/// serving the most of them.
fn busiest_worker(peers: &mut [Peer], streams: &[Stream]) -> usize {
    let started = wait_for(Duration::from_secs(120), || {
        streams
            .iter()
            .all(|s| s.chunks.load(Ordering::SeqCst) >= 2)
            .then_some(())
    });
    assert!(started.is_some(), "the streams never started");
    let mut best = (0, 0.0);
    for (i, p) in peers.iter_mut().enumerate().skip(1) {
        if !p.is_running() {
            continue;
        }
        let active = metric(p, "stator_worker_streams_active");
        if active > best.1 {
            best = (i, active);
        }
    }
    assert!(
        best.0 != 0,
        "no worker other than the frontend serves a stream"
    );
    eprintln!("busiest worker: p{} with {} streams", best.0, best.1);
    best.0
}

fn status_of(frontend: &Peer, id: u64) -> Option<String> {
    let members = frontend.members().ok()?;
    members
        .iter()
        .find(|m| m["id"].as_u64() == Some(id))
        .and_then(|m| m["status"].as_str().map(|s| s.to_ascii_lowercase()))
}

#[test]
fn requests_survive_their_worker_dying_or_freezing_token_exact() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let mut peers = start_cluster(root.path()).unwrap();

    let reference: Vec<String> = finish_all(start_all(&peers[0]))
        .into_iter()
        .map(|s| s.text)
        .collect();
    assert!(reference.iter().all(|t| !t.is_empty()));

    // SIGKILL the busiest worker mid-stream.
    let streams = start_all(&peers[0]);
    let victim = busiest_worker(&mut peers, &streams);
    peers[victim].kill9();
    let seen = finish_all(streams);
    for (i, (got, want)) in seen.iter().zip(&reference).enumerate() {
        assert_eq!(
            &got.text, want,
            "stream {i} differs after its worker was killed"
        );
    }
    let stall = seen.iter().map(|s| s.longest_gap).max().unwrap_or_default();
    eprintln!("longest client-visible stall around the SIGKILL: {stall:?}");
    let migrated = metric(&peers[0], "stator_migration_total");
    assert!(migrated >= 1.0, "no migration counted on the frontend");
    eprintln!("migrations after SIGKILL: {migrated}");

    // Quorum must survive a second failure: wait until a learner replaced the dead voter.
    let live_voters = wait_for(Duration::from_secs(30), || {
        let members = peers[0].members().ok()?;
        let live = members
            .iter()
            .filter(|m| m["raft_role"] == "voter")
            .filter(|m| {
                !m["status"]
                    .as_str()
                    .unwrap_or("")
                    .eq_ignore_ascii_case("down")
            })
            .count();
        (live >= 3).then_some(())
    });
    assert!(live_voters.is_some(), "the dead voter was never replaced");

    // SIGSTOP the busiest remaining worker until it is marked Down, then SIGCONT it.
    let streams = start_all(&peers[0]);
    let frozen = busiest_worker(&mut peers, &streams);
    let frozen_id = peers[frozen].node_id().unwrap();
    let stops_before = metric(&peers[frozen], "stator_worker_stops_total");
    const STALE_SENDS: &str = "stator_worker_stops_total{reason=\"caller_gone\"}";
    let stale_sends_before = metric(&peers[frozen], STALE_SENDS);
    peers[frozen].signal(libc::SIGSTOP);
    let down = wait_for(Duration::from_secs(20), || {
        (status_of(&peers[0], frozen_id)? == "down").then_some(())
    });
    peers[frozen].signal(libc::SIGCONT);
    assert!(down.is_some(), "the frozen peer was never marked Down");
    let seen = finish_all(streams);
    for (i, (got, want)) in seen.iter().zip(&reference).enumerate() {
        assert_eq!(&got.text, want, "stream {i} differs after its worker froze");
    }
    let stall = seen.iter().map(|s| s.longest_gap).max().unwrap_or_default();
    eprintln!("longest client-visible stall around the SIGSTOP: {stall:?}");
    // The resumed worker stops its stale streams and frees their blocks.
    let idle = wait_for(Duration::from_secs(20), || {
        let p = &peers[frozen];
        (metric(p, "stator_worker_streams_active") == 0.0
            && metric(p, "stator_worker_kv_blocks_used") == 0.0)
            .then_some(())
    });
    assert!(
        idle.is_some(),
        "the resumed worker kept streams or blocks:\n{}",
        peers[frozen].log()
    );
    assert!(
        metric(&peers[frozen], "stator_worker_stops_total") > stops_before,
        "the resumed worker never stopped a stale stream"
    );
    // Its frontend cut it off when the lease moved, so any send attempt after the freeze would
    // end as `caller_gone`: the fence and lease check must stop it before it tries.
    assert_eq!(
        metric(&peers[frozen], STALE_SENDS),
        stale_sends_before,
        "the resumed worker tried to send a token for a lease it had lost"
    );
    eprintln!(
        "fence holds on the resumed worker: {}",
        metric(&peers[frozen], "stator_worker_fence_holds_total")
    );
    let migrated_total = metric(&peers[0], "stator_migration_total");
    assert!(migrated_total > migrated, "the freeze caused no migration");
    eprintln!("migrations in total: {migrated_total}");
    eprintln!("{:?}", samples(&peers[0], "stator_migration_total"));
    for p in peers.iter_mut() {
        if !p.is_running() {
            continue;
        }
        eprintln!(
            "{}: {:?} {:?}",
            p.name,
            samples(p, "stator_worker_stops_total"),
            samples(p, "stator_worker_fence_holds_total")
        );
    }

    // A client that goes away mid-stream ends the generation and releases its lease.
    // Any early stop counts: the worker notices the closed stream or the released lease first.
    const EARLY_STOPS: &str = "stator_worker_stops_total";
    let gone_before: f64 = peers
        .iter_mut()
        .filter_map(|p| p.is_running().then(|| metric(p, EARLY_STOPS)))
        .sum();
    let abandoned = stream_completion(peers[0].url(), PROMPTS[1], Some(3));
    let hung_up = abandoned.handle.join();
    assert!(
        matches!(&hung_up, Ok(Ok(s)) if reference[1].starts_with(&s.text)),
        "the abandoned stream did not start as expected"
    );
    let released = wait_for(Duration::from_secs(20), || {
        let streaming: f64 = peers
            .iter_mut()
            .filter_map(|p| {
                p.is_running()
                    .then(|| metric(p, "stator_worker_streams_active"))
            })
            .sum();
        (streaming == 0.0 && metric(&peers[0], "stator_leases_active") == 0.0).then_some(())
    });
    assert!(
        released.is_some(),
        "leases or streams outlived their requests: {} leases",
        metric(&peers[0], "stator_leases_active")
    );
    let gone_after: f64 = peers
        .iter_mut()
        .filter_map(|p| p.is_running().then(|| metric(p, EARLY_STOPS)))
        .sum();
    assert!(
        gone_after > gone_before,
        "no worker stopped early after its caller went away"
    );
}
