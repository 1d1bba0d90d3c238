use axum::http::StatusCode;
use serde_json::{json, Value};
use stator_gpu::request::GenerateRequest;

use super::support::{Harness, Script, CONTEXT_LENGTH, MODEL};
use crate::openai::source::GenerateError;

fn chat(extra: Value) -> String {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body.to_string()
}

/// (path, body, status, error type, param, code)
fn bad_requests() -> Vec<(&'static str, String, u16, &'static str, Value, Value)> {
    let invalid = "invalid_request_error";
    let null = Value::Null;
    vec![
        (
            "/v1/chat/completions",
            "{not json".into(),
            400,
            invalid,
            null.clone(),
            null.clone(),
        ),
        (
            "/v1/chat/completions",
            "".into(),
            400,
            invalid,
            null.clone(),
            null.clone(),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"temperature": "hot"})),
            400,
            invalid,
            null.clone(),
            null.clone(),
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL}).to_string(),
            400,
            invalid,
            null.clone(),
            null.clone(),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": -1})),
            400,
            invalid,
            json!("max_tokens"),
            null.clone(),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"temperature": 2.5})),
            400,
            invalid,
            json!("temperature"),
            null.clone(),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"top_p": 1.5})),
            400,
            invalid,
            json!("top_p"),
            null.clone(),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"n": 2})),
            400,
            invalid,
            json!("n"),
            null.clone(),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            400,
            invalid,
            json!("top_logprobs"),
            null.clone(),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
            400,
            invalid,
            json!("stop"),
            null.clone(),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"messages": []})),
            400,
            invalid,
            json!("messages"),
            null.clone(),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"messages": [{"role": "wizard", "content": "x"}]})),
            400,
            invalid,
            json!("messages[0].role"),
            null.clone(),
        ),
        (
            "/v1/chat/completions",
            chat(
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            ),
            400,
            invalid,
            json!("messages[0].content[0].type"),
            null.clone(),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"model": "gpt-4o"})),
            404,
            invalid,
            json!("model"),
            json!("model_not_found"),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": CONTEXT_LENGTH})),
            400,
            invalid,
            null.clone(),
            json!("context_length_exceeded"),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"messages": [{"role": "user", "content": "x".repeat(CONTEXT_LENGTH)}]})),
            400,
            invalid,
            null.clone(),
            json!("context_length_exceeded"),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": ["a", "b"]}).to_string(),
            400,
            invalid,
            json!("prompt"),
            null.clone(),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": [99999999]}).to_string(),
            400,
            invalid,
            json!("prompt"),
            null.clone(),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": ""}).to_string(),
            400,
            invalid,
            json!("prompt"),
            null.clone(),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "a", "logprobs": 30}).to_string(),
            400,
            invalid,
            json!("logprobs"),
            null.clone(),
        ),
        (
            "/v1/completions",
            json!({"model": "nope", "prompt": "a"}).to_string(),
            404,
            invalid,
            json!("model"),
            json!("model_not_found"),
        ),
    ]
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_start_nothing() {
    let harness = Harness::new(Script::Reply("fine".into()));
    for (path, body, status, kind, param, code) in bad_requests() {
        let response = harness.call("POST", path, body.clone()).await;
        assert_eq!(
            response.status.as_u16(),
            status,
            "{body} → {}",
            response.body
        );
        assert_eq!(response.headers["content-type"], "application/json");
        assert!(response.headers.contains_key("x-request-id"));
        let (got_kind, got_param, got_code) = response.error();
        assert_eq!(
            (got_kind.as_str(), &got_param, &got_code),
            (Some(kind), &param, &code),
            "{body}"
        );
    }
    let requests: Vec<GenerateRequest> = harness.requests();
    assert!(
        requests.is_empty(),
        "a bad request reached the engine: {requests:?}"
    );
    // And the server still serves.
    let ok = harness
        .call("POST", "/v1/chat/completions", chat(json!({})))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn a_wrongly_typed_field_is_named_in_the_message() {
    let harness = Harness::new(Script::Reply("fine".into()));
    for (field, value) in [
        ("temperature", json!("hot")),
        ("max_tokens", json!(1.5)),
        ("stream", json!("yes")),
    ] {
        let response = harness
            .call("POST", "/v1/chat/completions", chat(json!({field: value})))
            .await;
        assert_eq!(response.status, 400);
        let message = response.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(field), "{field}: {message}");
    }
}

#[tokio::test]
async fn body_without_json_content_type_is_still_parsed() {
    // `curl -d` sends application/x-www-form-urlencoded.
    let harness = Harness::new(Script::Reply("fine".into()));
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(chat(json!({}))))
        .expect("request");
    let response = tower::ServiceExt::oneshot(harness.router.clone(), request)
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn queue_full_is_429_with_retry_after() {
    let harness = Harness::new(Script::Refuse(GenerateError::Overloaded));
    let response = harness
        .call(
            "POST",
            "/v1/chat/completions",
            chat(json!({"stream": true})),
        )
        .await;
    assert_eq!(response.status, 429);
    assert_eq!(response.headers["retry-after"], "1");
    assert_eq!(response.error().0, "rate_limit_error");
}

#[tokio::test]
async fn shutdown_is_503() {
    let harness = Harness::new(Script::Refuse(GenerateError::ShuttingDown));
    let body = json!({"model": MODEL, "prompt": "a"}).to_string();
    let response = harness.call("POST", "/v1/completions", body).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.error().0, "service_unavailable");
}

#[tokio::test]
async fn engine_failure_mid_generation() {
    let harness = Harness::new(Script::Fail("partial".into()));
    let full = harness
        .call("POST", "/v1/chat/completions", chat(json!({})))
        .await;
    assert_eq!(full.status, 500);
    assert_eq!(full.error().0, "server_error");

    // Streaming: the headers are out, so the error arrives as a data line before [DONE].
    let streamed = harness
        .call(
            "POST",
            "/v1/chat/completions",
            chat(json!({"stream": true})),
        )
        .await;
    assert_eq!(streamed.status, 200);
    let mut data = streamed.sse_data();
    assert_eq!(data.pop().as_deref(), Some("[DONE]"));
    let error: Value = serde_json::from_str(&data.pop().expect("error line")).expect("json");
    assert_eq!(error["error"]["type"], "server_error");
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "partial");
}
