//! One streamed greedy completion, with the wall-clock arrival time of every text chunk (the
//! peers' logs are on the same clock, so the two can be lined up).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use stator_tools::client::chunk::parse_chunk;
use stator_tools::client::sse::SseDecoder;

use super::timeline::unix_s;

#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub base_url: String,
    pub model: String,
    pub prompt: String,
    pub max_tokens: usize,
    pub timeout: Duration,
}

/// What the client saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamRecord {
    /// The API's id of the request (`x-request-id`), which the frontend's lease id contains.
    pub request_id: Option<String>,
    /// When the request went out (unix seconds).
    pub sent_s: f64,
    /// (unix seconds, text) of every chunk that carried text.
    pub chunks: Vec<(f64, String)>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// `[DONE]` arrived after a finish reason, with no error.
    pub complete: bool,
    pub error: Option<String>,
}

impl StreamRecord {
    pub fn text(&self) -> String {
        self.chunks.iter().map(|(_, t)| t.as_str()).collect()
    }

    /// Arrival of the first chunk at or after `at` (unix seconds).
    pub fn first_chunk_from(&self, at: f64) -> Option<f64> {
        self.chunks.iter().map(|(t, _)| *t).find(|t| *t >= at)
    }
}

/// Streams `spec`; `progress` counts text chunks as they arrive so that a trial can wait until
/// every stream is under way.
pub async fn stream_completion(
    http: reqwest::Client,
    spec: StreamSpec,
    progress: Arc<AtomicUsize>,
) -> StreamRecord {
    let mut record = StreamRecord {
        sent_s: unix_s(),
        ..StreamRecord::default()
    };
    if let Err(e) = run(&http, &spec, &progress, &mut record).await {
        record.error = Some(e);
    }
    record
}

async fn run(
    http: &reqwest::Client,
    spec: &StreamSpec,
    progress: &AtomicUsize,
    record: &mut StreamRecord,
) -> Result<(), String> {
    let body = json!({
        "model": spec.model,
        "prompt": spec.prompt,
        "max_tokens": spec.max_tokens,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let mut response = http
        .post(format!("{}/v1/completions", spec.base_url))
        .json(&body)
        .timeout(spec.timeout)
        .send()
        .await
        .map_err(|e| format!("request: {e}"))?;
    record.request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(format!("HTTP {status}: {text}"));
    }
    let mut decoder = SseDecoder::new();
    let mut finished = false;
    let mut done = false;
    while let Some(bytes) = response.chunk().await.map_err(|e| format!("body: {e}"))? {
        let arrived = unix_s();
        for data in decoder.push(&bytes) {
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let chunk = parse_chunk(&data)?;
            if !chunk.content.is_empty() {
                record.chunks.push((arrived, chunk.content));
                progress.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(usage) = chunk.usage {
                record.prompt_tokens = usage.prompt_tokens;
                record.completion_tokens = usage.completion_tokens;
            }
            finished |= chunk.finish_reason.is_some();
        }
    }
    record.complete = finished && done;
    if !record.complete {
        return Err(format!(
            "the stream ended early (finish reason seen: {finished}, [DONE]: {done})"
        ));
    }
    Ok(())
}
