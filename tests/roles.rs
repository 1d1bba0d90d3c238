//! Worker roles: a frontend-only peer (`--role frontend`) serves the cluster's workers; `stator
//! ctl set-role` switches a worker under load without losing a request; with no decode worker
//! left, or past `--migration-limit`, clients get a clear error in bounded time.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use stator_tests::*;

const MODEL_NAME: &str = "SmolLM2-135M-Instruct";
/// Long enough that the streams are still running when the drain timeout passes.
const MAX_TOKENS: usize = 96;
const DRAIN_TIMEOUT_S: &str = "1";
const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "To bake bread you need",
    "The largest planet in the solar system is",
    "The quick brown fox",
    "In computer science, a hash table is",
    "Water boils at",
];

/// p0: frontend only (bootstraps); p1, p2: aggregated workers; p3: frontend only with
/// `--migration-limit 0`.
fn start_cluster(root: &std::path::Path) -> Result<Vec<Peer>> {
    let model = default_model().display().to_string();
    let common = [
        "--model",
        &model,
        "--replace-voter-after-s",
        "1",
        // Two engines share this machine's few cores: a busy peer must not be marked Down.
        "--down-after-ms",
        "800",
    ];
    let args = |extra: &[&str]| -> Vec<String> {
        common.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let worker_args = args(&[
        "--kv-cache-mib",
        "128",
        "--drain-timeout-s",
        DRAIN_TIMEOUT_S,
    ]);
    let peers = start_peers(
        root,
        vec![
            args(&["--role", "frontend"]),
            worker_args.clone(),
            worker_args,
            args(&["--role", "frontend", "--migration-limit", "0"]),
        ],
        Duration::from_secs(90),
    )?;
    let registered = wait_for(Duration::from_secs(60), || {
        (workers(&peers[0]).ok()?.len() == 2).then_some(())
    });
    if registered.is_none() {
        bail!("the two workers never registered:\n{}", peers[1].log());
    }
    Ok(peers)
}

/// `stator ctl` against `peer`: exit success, stdout and stderr.
fn ctl(peer: &Peer, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(stator_bin())
        .arg("ctl")
        .arg("--peer")
        .arg(peer.url())
        .arg("--data-dir")
        .arg(&peer.data_dir)
        .args(args)
        .output()
        .expect("cannot run stator ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ctl roles --json`.
fn workers(peer: &Peer) -> Result<Vec<Value>> {
    let (ok, out, err) = ctl(peer, &["--json", "roles"]);
    if !ok {
        bail!("ctl roles failed: {err}");
    }
    let v: Value = serde_json::from_str(&out)?;
    v.as_array()
        .cloned()
        .ok_or_else(|| anyhow!("not a list: {v}"))
}

fn worker_of(workers: &[Value], node: u64) -> Option<&Value> {
    workers.iter().find(|w| w["node"].as_u64() == Some(node))
}

fn chat(peer: &Peer, prompt: &str) -> Result<String> {
    let body = json!({
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 24, "temperature": 0,
    });
    let (code, text) = http_request(
        "POST",
        &format!("{}/v1/chat/completions", peer.url()),
        None,
        Some(body),
    )?;
    if code != 200 {
        bail!("{} answered {code}: {text}", peer.name);
    }
    let v: Value = serde_json::from_str(&text)?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no content in {v}"))
}

fn stream_completion(url: String, prompt: &'static str) -> Stream {
    stator_tests::stream_completion(url, MODEL_NAME, prompt, MAX_TOKENS, None)
}

fn join(stream: Stream) -> Result<String> {
    stream
        .handle
        .join()
        .map_err(|_| anyhow!("stream thread panicked"))?
        .map(|seen| seen.text)
}

fn wait_started(streams: &[Stream]) {
    let started = wait_for(Duration::from_secs(120), || {
        streams
            .iter()
            .all(|s| s.chunks.load(Ordering::SeqCst) >= 2)
            .then_some(())
    });
    assert!(started.is_some(), "the streams never started");
}

/// Sum of every sample of `name` on the peer's /metrics (0 when absent).
fn metric(peer: &Peer, name: &str) -> f64 {
    let Ok((200, body)) = http_get(&format!("{}/metrics", peer.url()), None) else {
        return 0.0;
    };
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Index of the running worker peer (p1 or p2) streaming the most requests.
fn busiest_worker(peers: &mut [Peer]) -> usize {
    let mut best = (0, 0.0);
    for i in [1, 2] {
        if !peers[i].is_running() {
            continue;
        }
        let active = metric(&peers[i], "stator_worker_streams_active");
        if active > best.1 {
            best = (i, active);
        }
    }
    assert!(best.0 != 0, "no worker serves a stream");
    best.0
}

/// The warnings and migrations in a peer's log, for failure messages.
fn notable_lines(peer: &Peer) -> String {
    peer.log()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("migrating"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn node_status(peer: &Peer, id: u64) -> Option<String> {
    let members = peer.members().ok()?;
    members
        .iter()
        .find(|m| m["id"].as_u64() == Some(id))
        .and_then(|m| m["status"].as_str().map(str::to_ascii_lowercase))
}

#[test]
fn frontends_serve_workers_roles_switch_under_load_and_failures_are_clear() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let mut peers = start_cluster(root.path()).unwrap();
    let ids: Vec<u64> = peers.iter().map(|p| p.node_id().unwrap()).collect();

    // (a) A frontend-only peer answers exactly what an aggregated peer's own engine answers.
    for prompt in ["What is the capital of France?", "Name three colors."] {
        let direct = chat(&peers[1], prompt).unwrap();
        assert!(!direct.is_empty());
        assert_eq!(
            chat(&peers[0], prompt).unwrap(),
            direct,
            "{prompt:?} via p0"
        );
        assert_eq!(
            chat(&peers[3], prompt).unwrap(),
            direct,
            "{prompt:?} via p3"
        );
    }
    let listed = workers(&peers[0]).unwrap();
    assert_eq!(listed.len(), 2, "frontends run no worker: {listed:?}");
    for (i, w) in [
        (1, worker_of(&listed, ids[1])),
        (2, worker_of(&listed, ids[2])),
    ] {
        let w = w.unwrap_or_else(|| panic!("p{i} has no worker in {listed:?}"));
        assert_eq!(
            (w["role"].as_str(), w["state"].as_str()),
            (Some("aggregated"), Some("active"))
        );
        assert_eq!(w["model"], MODEL_NAME);
    }
    let (ok, table, _) = ctl(&peers[0], &["roles"]);
    assert!(
        ok && table.contains("aggregated") && table.contains(&format!("{}/0", ids[1])),
        "{table}"
    );

    // Bad input is explained and changes nothing.
    let before = workers(&peers[0]).unwrap();
    let (ok, _, err) = ctl(&peers[0], &["set-role", "424242/0", "decode"]);
    assert!(!ok && err.contains("no worker 424242/0"), "{err}");
    let (ok, _, err) = ctl(&peers[0], &["set-role", &ids[1].to_string(), "frontend"]);
    assert!(!ok && err.contains("unknown role"), "{err}");
    let (ok, out, err) = ctl(&peers[0], &["set-role", &ids[1].to_string(), "aggregated"]);
    assert!(
        ok && out.contains("already has role aggregated"),
        "{out} {err}"
    );
    assert_eq!(workers(&peers[0]).unwrap(), before);

    // (b) set-role under load: every stream finishes exactly as without the switch.
    let reference: Vec<String> = PROMPTS
        .iter()
        .map(|p| stream_completion(peers[0].url(), p))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|s| join(s).unwrap())
        .collect();
    let streams: Vec<Stream> = PROMPTS
        .iter()
        .map(|p| stream_completion(peers[0].url(), p))
        .collect();
    wait_started(&streams);
    let switched = busiest_worker(&mut peers);
    let switched_id = format!("{}/0", ids[switched]);
    let (ok, out, err) = ctl(&peers[0], &["set-role", &switched_id, "decode"]);
    assert!(ok && out.contains("draining"), "{out} {err}");
    for (i, s) in streams.into_iter().enumerate() {
        let got = join(s).unwrap_or_else(|e| {
            panic!(
                "stream {i} failed during the switch: {e:#}\n--- frontend log ---\n{}",
                notable_lines(&peers[0])
            )
        });
        assert_eq!(
            got, reference[i],
            "stream {i} differs after the role switch"
        );
    }
    let switched_ok = wait_for(Duration::from_secs(30), || {
        let listed = workers(&peers[0]).ok()?;
        let w = worker_of(&listed, ids[switched])?;
        (w["role"] == "decode" && w["state"] == "active" && w["pending_role"].is_null())
            .then_some(())
    });
    assert!(
        switched_ok.is_some(),
        "the switched worker never became an active decode worker: {:?}",
        workers(&peers[0])
    );
    let moved = metric(&peers[switched], "stator_worker_drain_lease_moves_total");
    eprintln!("leases moved by the drain: {moved}");
    assert!(
        moved >= 1.0,
        "streams outlived the {DRAIN_TIMEOUT_S} s drain timeout, yet no lease was moved"
    );

    // (d) --migration-limit 0 (p3): a request whose worker dies fails, naming the limit.
    let doomed = stream_completion(peers[3].url(), PROMPTS[1]);
    wait_started(std::slice::from_ref(&doomed));
    let victim = busiest_worker(&mut peers);
    peers[victim].kill9();
    let t0 = Instant::now();
    let err = join(doomed).expect_err("the stream survived although no migration is allowed");
    eprintln!("after {:?}: {err:#}", t0.elapsed());
    assert!(
        format!("{err:#}").contains("after 0 migrations"),
        "the error does not name the migration limit: {err:#}"
    );
    assert!(t0.elapsed() < Duration::from_secs(30));

    // Quorum must survive the next kill: wait until a learner replaced the dead voter.
    let replaced = wait_for(Duration::from_secs(30), || {
        let members = peers[0].members().ok()?;
        let live_voters = members
            .iter()
            .filter(|m| m["raft_role"] == "voter" && m["status"] != "down")
            .count();
        (live_voters >= 3).then_some(())
    });
    assert!(replaced.is_some(), "the dead voter was never replaced");

    // (c) No decode worker left: streams in flight and new requests end with a clear error.
    let last = 3 - victim;
    let orphan = stream_completion(peers[0].url(), PROMPTS[2]);
    wait_started(std::slice::from_ref(&orphan));
    peers[last].kill9();
    let t0 = Instant::now();
    let err = join(orphan).expect_err("a stream finished with no worker left");
    eprintln!(
        "in-flight stream with no worker left, after {:?}: {err:#}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the error took {:?}",
        t0.elapsed()
    );
    let down = wait_for(Duration::from_secs(20), || {
        (node_status(&peers[0], ids[last])? == "down").then_some(())
    });
    assert!(
        down.is_some(),
        "the last worker's peer was never marked Down"
    );
    let t0 = Instant::now();
    let body = json!({"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 4});
    let (code, text) = http_request(
        "POST",
        &format!("{}/v1/completions", peers[0].url()),
        None,
        Some(body),
    )
    .unwrap();
    assert_eq!(code, 503, "{text}");
    assert!(text.to_lowercase().contains("no worker"), "{text}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the 503 took {:?}",
        t0.elapsed()
    );
}
