//! Disaggregated prefill: a request routed through p0 is decoded on a decode peer whose prompt
//! KV is computed on the prefill peer and pulled over QUIC. The client must get exactly the
//! single-peer output, and still get it when the prefill peer dies mid-transfer.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use stator_tests::*;

const MODEL_NAME: &str = "SmolLM2-135M-Instruct";
const MAX_TOKENS: usize = 16;
/// Prompts longer than this (uncached) go to the prefill peer.
const DISAGG_MIN_TOKENS: &str = "64";

/// A prompt of `items` distinct sentences (~8 tokens each); `salt` keeps prompts apart so no
/// decode peer has one cached (a cached prompt is prefilled locally, by design).
fn long_prompt(salt: usize, items: usize) -> String {
    const COLORS: [&str; 5] = ["red", "green", "blue", "amber", "violet"];
    const THINGS: [&str; 6] = ["lamp", "river", "engine", "garden", "letter", "bridge"];
    let mut text = format!("Inventory list number {salt}:\n");
    for i in 0..items {
        let color = COLORS[(i + salt) % COLORS.len()];
        let thing = THINGS[(i * 7 + salt) % THINGS.len()];
        text.push_str(&format!("Item {i} is a {color} {thing}. "));
    }
    text.push_str("\nThe last item on the list is");
    text
}

/// A greedy, non-streaming completion.
fn complete(url: &str, prompt: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(240))
            .build()?;
        let body = json!({
            "model": MODEL_NAME, "prompt": prompt, "max_tokens": MAX_TOKENS,
            "temperature": 0, "stream": false,
        });
        let resp = client
            .post(format!("{url}/v1/completions"))
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if status != 200 {
            bail!("status {status}: {v}");
        }
        v["choices"][0]["text"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no text in {v}"))
    })
}

fn model_args() -> Vec<String> {
    let model = default_model().display().to_string();
    [
        "--model",
        &model,
        "--kv-cache-mib",
        "128",
        // Four engines share this machine's few cores: a busy peer can miss the default
        // 300 ms and be marked Down for nothing.
        "--down-after-ms",
        "800",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What one peer alone (no leases, no routing) answers: the reference.
fn single_peer_outputs(root: &std::path::Path, prompts: &[String]) -> Result<Vec<String>> {
    let mut alone = Peer::new(root, "alone");
    alone.extra_args = model_args();
    alone.start()?;
    alone.wait_healthy(Duration::from_secs(90))?;
    let outputs = prompts
        .iter()
        .map(|p| complete(&alone.url(), p))
        .collect::<Result<Vec<_>>>();
    alone.kill9();
    outputs
}

/// p0: frontend with an aggregated engine; p1: prefill; p2, p3: decode.
fn start_cluster(root: &std::path::Path) -> Result<Vec<Peer>> {
    let mut frontend = model_args();
    frontend
        .extend(["--request-leases", "--disagg-min-tokens", DISAGG_MIN_TOKENS].map(String::from));
    let mut args = vec![frontend];
    for role in ["prefill", "decode", "decode"] {
        let mut a = model_args();
        a.extend(["--role", role].map(String::from));
        args.push(a);
    }
    let peers = start_peers(root, args, Duration::from_secs(90))?;
    wait_workers_registered(&peers, Duration::from_secs(60))?;
    Ok(peers)
}

#[test]
fn disaggregated_prefill_is_token_exact_and_survives_the_prefill_peer_dying() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let prompts: Vec<String> = (0..3).map(|salt| long_prompt(salt, 24)).collect();
    // Long enough that the prefill peer is still computing when it is killed.
    let slow = long_prompt(99, 110);
    let mut all = prompts.clone();
    all.push(slow.clone());
    let reference = single_peer_outputs(root.path(), &all).unwrap();
    assert!(reference.iter().all(|t| !t.is_empty()));

    let mut peers = start_cluster(root.path()).unwrap();
    let (frontend, prefill) = (0, 1);

    // 1. Through the disaggregated path, token-exact.
    for (i, prompt) in prompts.iter().enumerate() {
        let got = complete(&peers[frontend].url(), prompt).unwrap();
        assert_eq!(
            got, reference[i],
            "prompt {i} differs through the prefill peer"
        );
    }
    let remote = metric_sum(&peers[prefill], "stator_prefill_total", "where=\"remote\"");
    let sent = metric_sum(&peers[prefill], "stator_kv_transfer_bytes_total", "sent");
    let received: f64 = peers
        .iter()
        .map(|p| metric_sum(p, "stator_kv_transfer_bytes_total", "received"))
        .sum();
    eprintln!("remote prefills {remote}, KV bytes sent {sent}, received {received}");
    assert!(
        remote >= prompts.len() as f64,
        "the prefill peer served {remote} prefills:\n{}",
        peers[prefill].log()
    );
    assert!(
        sent > 0.0 && sent == received,
        "KV bytes sent {sent}, received {received}"
    );

    // 3. SIGKILL the prefill peer while it computes a transfer: the request still completes.
    let failures_before: f64 = peers
        .iter()
        .map(|p| metric_sum(p, "stator_kv_transfer_failures_total", ""))
        .sum();
    let url = peers[frontend].url();
    let client = std::thread::spawn(move || complete(&url, &slow));
    let busy = wait_for(Duration::from_secs(60), || {
        (metric_sum(&peers[prefill], "stator_worker_running_seqs", "") > 0.0).then_some(())
    });
    assert!(
        busy.is_some(),
        "the prefill peer never started the slow prompt"
    );
    peers[prefill].kill9();
    let killed_at = std::time::Instant::now();
    let got = client.join().expect("client thread").unwrap();
    eprintln!(
        "the request finished {:?} after the prefill peer was killed",
        killed_at.elapsed()
    );
    assert_eq!(
        &got,
        reference.last().unwrap(),
        "output after the prefill peer died"
    );
    let failures_after: f64 = peers
        .iter_mut()
        .filter_map(|p| {
            p.is_running()
                .then(|| metric_sum(p, "stator_kv_transfer_failures_total", ""))
        })
        .sum();
    assert!(
        failures_after > failures_before,
        "no decode peer saw the transfer fail"
    );
    for p in peers.iter_mut() {
        p.kill9();
    }
}
