//! The API over the real engine (CPU backend, the "tiny" preset with random weights, sized to the
//! test tokenizer's vocabulary): the local `TokenSource` end to end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use futures::StreamExt;
use serde_json::{json, Value};
use stator_gpu::backend::cpu::CpuBackend;
use stator_gpu::engine::{Engine, EngineConfig, EngineHandle};
use stator_gpu::presets::preset;
use stator_gpu::random_weights::random_weights;
use tower::ServiceExt;

use super::support::{tokenizer, Response};
use crate::openai::{router, ApiState, TokenSource};

const MODEL: &str = "tiny-random";
const DEADLINE: Duration = Duration::from_secs(30);

struct Served {
    router: axum::Router,
    engine: EngineHandle,
}

fn serve(engine_config: EngineConfig) -> Served {
    let tokenizer = tokenizer();
    let mut config = preset("tiny").expect("tiny preset");
    config.vocab_size = tokenizer.vocab_size();
    // Room for generations long enough to still be running while a test acts on them.
    config.max_position_embeddings = 16384;
    let weights = random_weights(&config, 11);
    let blocks = config.max_position_embeddings / 16;
    let backend = CpuBackend::new(config, weights, blocks, 16).expect("cpu backend");
    let engine = Engine::start(
        Box::new(backend),
        engine_config,
        tokenizer.eos_ids().to_vec(),
    );
    let state = ApiState {
        model_name: MODEL.into(),
        tokenizer,
        context_length: engine.max_model_len(),
        source: Arc::new(engine.clone()) as Arc<dyn TokenSource>,
        default_max_tokens: 16,
    };
    Served {
        router: router(Arc::new(state)),
        engine,
    }
}

fn chat_request(extra: Value) -> Request<Body> {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 12});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .body(Body::from(body.to_string()))
        .expect("request")
}

async fn call(served: &Served, extra: Value) -> Response {
    let response =
        tokio::time::timeout(DEADLINE, served.router.clone().oneshot(chat_request(extra)))
            .await
            .expect("answer within deadline")
            .expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    Response {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(bytes.to_vec()).expect("utf-8"),
    }
}

fn content(response: &Response) -> String {
    let body = response.json();
    body["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string()
}

#[tokio::test]
async fn greedy_streaming_equals_non_streaming_and_seeds_reproduce() {
    let served = serve(EngineConfig::default());
    let whole = call(&served, json!({"temperature": 0})).await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    let streamed: String = call(&served, json!({"temperature": 0, "stream": true}))
        .await
        .sse_chunks()
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed, content(&whole));

    let seeded = json!({"temperature": 1.0, "seed": 99, "max_tokens": 24, "ignore_eos": true});
    let first = call(&served, seeded.clone()).await;
    let second = call(&served, seeded).await;
    assert_eq!(content(&first), content(&second));
    assert_eq!(first.json()["usage"]["completion_tokens"], 24);
}

#[tokio::test]
async fn a_full_queue_is_429_from_the_real_engine() {
    // One running sequence at a time and one waiting place.
    let served = serve(EngineConfig {
        max_num_seqs: 1,
        max_queue: 1,
        ..EngineConfig::default()
    });
    let long = json!({"stream": true, "ignore_eos": true, "max_tokens": served.engine.max_model_len() - 64});
    let running = served
        .router
        .clone()
        .oneshot(chat_request(long))
        .await
        .expect("infallible");
    let mut running = running.into_body().into_data_stream();
    // The role chunk and a token: the first request has started, so it no longer queues.
    for _ in 0..2 {
        tokio::time::timeout(DEADLINE, running.next())
            .await
            .expect("frame");
    }
    let waiting = tokio::spawn(served.router.clone().oneshot(chat_request(json!({}))));
    let deadline = Instant::now() + DEADLINE;
    while served.engine.stats().waiting == 0 {
        assert!(Instant::now() < deadline, "second request never queued");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let refused = call(&served, json!({})).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(refused.error().0, "rate_limit_error");
    // Once the running stream goes away, the queued request is served.
    drop(running);
    let served_later = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("queued request answered");
    assert_eq!(
        served_later.expect("task").expect("infallible").status(),
        200
    );
}

#[tokio::test]
async fn a_disconnected_stream_frees_the_sequence() {
    let served = serve(EngineConfig::default());
    let max_tokens = served.engine.max_model_len() - 64;
    let request =
        chat_request(json!({"stream": true, "ignore_eos": true, "max_tokens": max_tokens}));
    let response = served
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body().into_data_stream();
    // The role chunk and one token.
    for _ in 0..2 {
        tokio::time::timeout(DEADLINE, body.next())
            .await
            .expect("frame")
            .expect("open")
            .expect("bytes");
    }
    drop(body);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stats = served.engine.stats();
        if stats.running == 0 && stats.waiting == 0 && stats.kv_blocks_used == 0 {
            assert!(
                (stats.tokens_generated_total as usize) < max_tokens,
                "the whole generation ran: {stats:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sequence still held after the client left: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
