//! Admission through request leases: a peer's API runs requests on a worker over QUIC, and a
//! worker whose engine queue is full answers its client as a local engine would: 429, with
//! OpenAI's error shape, and the peer keeps serving.

use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use stator_tests::*;

#[test]
fn a_full_worker_queue_reaches_the_client_as_429_through_the_leased_path() -> Result<()> {
    let _serial = serial();
    let root = tempfile::tempdir()?;
    let model = default_model().display().to_string();
    let mut peer = Peer::new(root.path(), "p0");
    peer.extra_args = ["--model", &model, "--max-num-seqs", "1", "--max-queue", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    peer.start()?;
    peer.wait_healthy(Duration::from_secs(90))?;
    let url = format!("{}/v1/completions", peer.url());
    let body = json!({
        "model": "SmolLM2-135M-Instruct",
        "prompt": "Write a long story about a lighthouse keeper:",
        "max_tokens": 48,
        "temperature": 0,
        "ignore_eos": true,
    });
    // The first request must be served before the burst, so the worker is registered and warm.
    let (code, text) = http_request("POST", &url, None, Some(body.clone()))?;
    if code != 200 {
        return Err(anyhow!("warm-up got {code}: {text}\n{}", peer.log()));
    }
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || http_request("POST", &url, None, Some(body)))
        })
        .collect();
    let mut codes = Vec::new();
    for handle in burst {
        let (code, text) = handle
            .join()
            .map_err(|_| anyhow!("client thread panicked"))??;
        if code == 429 {
            let error: Value = serde_json::from_str(&text)?;
            assert!(
                error["error"]["message"].is_string() && error["error"]["type"].is_string(),
                "a 429 without OpenAI's error shape: {text}"
            );
        } else {
            assert_eq!(code, 200, "neither served nor 429: {text}");
        }
        codes.push(code);
    }
    assert!(
        codes.contains(&429),
        "8 requests at once on a 1+1 queue: none got 429 ({codes:?})"
    );
    assert!(
        codes.contains(&200),
        "nothing of the burst was served ({codes:?})"
    );
    // Nothing stays stuck: the peer serves again once the burst is over.
    let (code, text) = http_request("POST", &url, None, Some(body))?;
    assert_eq!(code, 200, "after the burst: {text}");
    Ok(())
}
