//! A small OpenAI-compatible streaming server with a known, deterministic cadence, so the
//! bench's measurements can be checked against the truth.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::time::Instant;

/// How the mock behaves for every request.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// Delay from receiving the request to the first content chunk.
    pub ttft: Duration,
    /// Delay between content chunks.
    pub itl: Duration,
    /// Tokens packed into one chunk.
    pub tokens_per_chunk: usize,
    /// Every n-th request (1-based) answers 503; 0 never.
    pub fail_every: usize,
    /// Stop streaming after this many chunks without finishing (a broken stream).
    pub break_after: Option<usize>,
    /// Send usage in the last chunk.
    pub usage: bool,
}

impl Cadence {
    pub fn new(ttft_ms: u64, itl_ms: u64) -> Self {
        Self {
            ttft: Duration::from_millis(ttft_ms),
            itl: Duration::from_millis(itl_ms),
            tokens_per_chunk: 1,
            fail_every: 0,
            break_after: None,
            usage: true,
        }
    }
}

#[derive(Default)]
pub struct Counters {
    pub requests: AtomicUsize,
    pub connections: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

pub struct MockServer {
    pub url: String,
    pub counters: Arc<Counters>,
}

struct Shared {
    cadence: Cadence,
    counters: Arc<Counters>,
}

/// Starts the mock on a free loopback port in the current runtime.
pub async fn start(cadence: Cadence) -> MockServer {
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared {
        cadence,
        counters: counters.clone(),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let connections = counters.clone();
    let listener = listener.tap_io(move |_| {
        connections.connections.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    MockServer {
        url: format!("http://{addr}"),
        counters,
    }
}

async fn chat(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    respond(shared, body, true)
}

async fn completions(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    respond(shared, body, false)
}

fn respond(shared: Arc<Shared>, body: Value, chat: bool) -> Response {
    let received = Instant::now();
    let n = shared.counters.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let cadence = shared.cadence;
    if n.checked_rem(cadence.fail_every) == Some(0) {
        return (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
    }
    if body["stream"] != true || body["ignore_eos"] != true {
        return (
            StatusCode::BAD_REQUEST,
            "stream and ignore_eos must be true",
        )
            .into_response();
    }
    let tokens = body["max_tokens"].as_u64().unwrap_or(16) as usize;
    let prompt_words = if chat {
        body["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .count()
    } else {
        body["prompt"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .count()
    };
    let chunks = tokens.div_ceil(cadence.tokens_per_chunk);
    let counters = shared.counters.clone();
    let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    counters.max_in_flight.fetch_max(now, Ordering::SeqCst);

    let stream = futures::stream::unfold(0usize, move |k| {
        let counters = counters.clone();
        async move {
            let events = if cadence.break_after.is_some_and(|limit| k >= limit) {
                counters.in_flight.fetch_sub(1, Ordering::SeqCst);
                return None;
            } else if k < chunks {
                // Chunk k is due at a fixed time after the request arrived: no drift.
                tokio::time::sleep_until(received + cadence.ttft + cadence.itl * k as u32).await;
                let in_chunk = cadence
                    .tokens_per_chunk
                    .min(tokens - k * cadence.tokens_per_chunk);
                let text = " tok".repeat(in_chunk);
                let chunk = if chat {
                    json!({"choices":[{"index":0,"delta":{"content":text},"finish_reason":null}]})
                } else {
                    json!({"choices":[{"index":0,"text":text,"finish_reason":null}]})
                };
                let mut events = String::new();
                if k == 0 && chat {
                    events.push_str("data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n");
                }
                events.push_str(&format!("data: {chunk}\n\n"));
                events
            } else if k == chunks {
                let mut events = format!(
                    "data: {}\n\n",
                    json!({"choices":[{"index":0,"delta":{},"text":"","finish_reason":"length"}]})
                );
                if cadence.usage {
                    events.push_str(&format!(
                        "data: {}\n\n",
                        json!({"choices":[],"usage":{"prompt_tokens":prompt_words,"completion_tokens":tokens}})
                    ));
                }
                events.push_str("data: [DONE]\n\n");
                counters.in_flight.fetch_sub(1, Ordering::SeqCst);
                events
            } else {
                return None;
            };
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(events)),
                k + 1,
            ))
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}
