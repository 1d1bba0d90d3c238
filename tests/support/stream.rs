//! A streaming completions client for tests: one request per thread, what it saw, or why it
//! failed (an SSE error event, a bad status, a stream without `[DONE]`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

/// What a client saw: the text, and the longest wait between two chunks.
pub struct Seen {
    pub text: String,
    pub longest_gap: Duration,
}

/// One streamed completion: what it saw, or why it failed.
pub struct Stream {
    /// Text chunks received so far.
    pub chunks: Arc<AtomicUsize>,
    pub handle: JoinHandle<Result<Seen>>,
}

/// Streams a greedy completion of `prompt` (`max_tokens`) from `url`; `hang_up_after`:
/// disconnect after that many chunks (a client going away).
pub fn stream_completion(
    url: String,
    model: &'static str,
    prompt: &'static str,
    max_tokens: usize,
    hang_up_after: Option<usize>,
) -> Stream {
    let chunks = Arc::new(AtomicUsize::new(0));
    let seen = chunks.clone();
    let handle = std::thread::spawn(move || -> Result<Seen> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(180))
                .build()?;
            let body = json!({
                "model": model, "prompt": prompt, "max_tokens": max_tokens,
                "temperature": 0, "stream": true,
            });
            let mut resp = client
                .post(format!("{url}/v1/completions"))
                .json(&body)
                .send()
                .await?;
            if resp.status() != 200 {
                bail!("status {}: {}", resp.status(), resp.text().await?);
            }
            let mut buf = String::new();
            let mut text = String::new();
            let mut done = false;
            let mut last = Instant::now();
            let mut longest_gap = Duration::ZERO;
            while let Some(bytes) = resp.chunk().await? {
                longest_gap = longest_gap.max(last.elapsed());
                last = Instant::now();
                buf.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    for line in event.lines() {
                        let Some(data) = line.strip_prefix("data: ") else {
                            continue;
                        };
                        if data == "[DONE]" {
                            done = true;
                            continue;
                        }
                        let v: Value = serde_json::from_str(data)?;
                        if v.get("error").is_some() {
                            bail!("error event: {v}");
                        }
                        if let Some(t) = v["choices"][0]["text"].as_str() {
                            text.push_str(t);
                            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                            if hang_up_after.is_some_and(|limit| n >= limit) {
                                return Ok(Seen { text, longest_gap });
                            }
                        }
                    }
                }
            }
            if !done {
                bail!("the stream ended without [DONE] after {text:?}");
            }
            Ok(Seen { text, longest_gap })
        })
    });
    Stream { chunks, handle }
}
