//! The routing feed end to end: a frontend peer learns from a worker's KV events which prefix it
//! holds and sends a request with that prefix there; it forgets the worker's blocks when the
//! worker dies; and the leader's load table reaches every peer.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use stator_tests::*;

const MODEL_NAME: &str = "SmolLM2-135M-Instruct";

/// About 400 tokens that no other request shares.
fn long_prompt() -> String {
    let mut text = String::from("Routing notebook:\n");
    for i in 0..50 {
        text.push_str(&format!(
            "Entry {i} records the tide at {} metres. ",
            i * 3 % 17
        ));
    }
    text.push_str("\nThe next entry is");
    text
}

/// A greedy completion of a few tokens; returns the usage's cached prompt tokens.
fn cached_tokens(url: &str, prompt: &str) -> Result<u64> {
    let body = json!({
        "model": MODEL_NAME, "prompt": prompt, "max_tokens": 2, "temperature": 0, "stream": false,
    });
    let (code, text) = http_request("POST", &format!("{url}/v1/completions"), None, Some(body))?;
    if code != 200 {
        bail!("status {code}: {text}");
    }
    let v: Value = serde_json::from_str(&text)?;
    v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .ok_or_else(|| anyhow!("no cached_tokens in {v}"))
}

/// The value of an unlabelled gauge on a peer's /metrics.
fn gauge(peer: &Peer, name: &str) -> Option<f64> {
    let (_, text) = http_get(&format!("{}/metrics", peer.url()), None).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn the_frontend_routes_a_cached_prefix_to_its_holder_and_forgets_a_dead_worker() -> Result<()> {
    let model = default_model();
    let model = model.to_str().ok_or_else(|| anyhow!("model path"))?;
    let root = tempfile::tempdir()?;
    let start = |name: &str, extra: &[&str], join: Option<(std::net::SocketAddr, String)>| {
        let mut p = Peer::new(root.path(), name);
        p.extra_args = ["--model", model, "--kv-cache-mib", "64"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        p.join = join;
        p.start()?;
        p.wait_healthy(Duration::from_secs(90))?;
        anyhow::Ok(p)
    };
    // The workers serve their own API from their own engine, so a request sent to one of them
    // is computed there.
    let first = start("p0", &["--local-engine-only"], None)?;
    let token = wait_for(Duration::from_secs(5), || first.printed_join_token())
        .ok_or_else(|| anyhow!("no join token printed:\n{}", first.log()))?;
    let join = Some((first.quic, token));
    let second = start("p1", &["--local-engine-only"], join.clone())?;
    let frontend = start("p2", &["--role", "frontend"], join)?;
    let mut peers = [first, second, frontend];
    let f = 2;
    let front = peers[f].url();
    wait_for(Duration::from_secs(60), || {
        cached_tokens(&front, "hello").ok()
    })
    .ok_or_else(|| anyhow!("the frontend never served a request"))?;

    // The load table reaches a follower: its age stays under the staleness bound.
    let age = wait_for(Duration::from_secs(10), || {
        gauge(&peers[f], "stator_router_load_table_age_seconds").filter(|a| *a < 1.0)
    });
    assert!(age.is_some(), "no fresh load table on the frontend");

    // The worker that loses ties (the higher node id) computes the prompt on its own engine,
    // not through the frontend: only its KV events can tell the frontend where the prefix is.
    let holder = if peers[0].node_id()? > peers[1].node_id()? {
        0
    } else {
        1
    };
    let prompt = long_prompt();
    let before = gauge(&peers[f], "stator_router_indexed_blocks").unwrap_or(0.0);
    cached_tokens(&peers[holder].url(), &prompt)?;
    let indexed = wait_for(Duration::from_secs(10), || {
        gauge(&peers[f], "stator_router_indexed_blocks").filter(|n| *n >= before + 20.0)
    })
    .ok_or_else(|| anyhow!("the frontend never indexed the holder's blocks"))?;
    // The load table may still show the holder busy with that prompt (heartbeats every 50 ms,
    // fan-out every 100 ms): a busy holder rightly loses to an idle worker. Let it settle.
    std::thread::sleep(Duration::from_millis(600));
    let cached = cached_tokens(&front, &prompt)?;
    assert!(
        cached >= 320,
        "the routed request found only {cached} cached tokens: it did not go to the holder"
    );

    // The holder dies: its stream breaks and the frontend forgets its blocks; requests still
    // succeed on the other worker.
    peers[holder].kill9();
    let cleared = wait_for(Duration::from_secs(10), || {
        gauge(&peers[f], "stator_router_indexed_blocks").filter(|n| *n <= indexed - 20.0)
    });
    assert!(
        cleared.is_some(),
        "the dead worker's blocks are still indexed ({indexed} before, {:?} now)",
        gauge(&peers[f], "stator_router_indexed_blocks")
    );
    let after = wait_for(Duration::from_secs(20), || {
        cached_tokens(&front, &prompt).ok()
    });
    assert!(after.is_some(), "requests fail after a worker died");
    Ok(())
}
