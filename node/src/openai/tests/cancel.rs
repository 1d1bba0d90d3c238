use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use futures::StreamExt;
use serde_json::json;
use tower::ServiceExt;

use super::support::{Harness, Script, MODEL};

const DEADLINE: Duration = Duration::from_secs(5);

fn request(stream: bool) -> Request<Body> {
    let body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": stream});
    Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

async fn wait_until_dropped(harness: &Harness) {
    tokio::time::timeout(DEADLINE, async {
        while !harness.probe().dropped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the token stream was not dropped after the client left");
}

#[tokio::test]
async fn dropping_a_streamed_body_cancels_the_generation() {
    let harness = Harness::new(Script::Hang("abc".into()));
    let response = harness
        .router
        .clone()
        .oneshot(request(true))
        .await
        .expect("infallible");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body().into_data_stream();
    let mut received = String::new();
    // Role chunk, then the three tokens; the source then hangs.
    while !received.contains(r#""content":"c""#) {
        let frame = tokio::time::timeout(DEADLINE, body.next())
            .await
            .expect("frame within deadline")
            .expect("body open")
            .expect("frame");
        received.push_str(&String::from_utf8_lossy(&frame));
    }
    assert!(
        !harness.probe().dropped.load(Ordering::SeqCst),
        "still generating while the client listens"
    );
    drop(body);
    wait_until_dropped(&harness).await;
}

#[tokio::test]
async fn abandoning_a_non_streamed_request_cancels_the_generation() {
    let harness = Harness::new(Script::Hang("abc".into()));
    let call = harness.router.clone().oneshot(request(false));
    // The client gives up while the engine is still generating.
    let outcome = tokio::time::timeout(Duration::from_millis(100), call).await;
    assert!(outcome.is_err(), "a hanging generation cannot complete");
    assert_eq!(harness.probe().pulled.load(Ordering::SeqCst), 3);
    wait_until_dropped(&harness).await;
}
