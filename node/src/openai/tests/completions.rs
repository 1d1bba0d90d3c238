use serde_json::{json, Value};

use super::support::{Harness, Script, MODEL};

const REPLY: &str = " jumps over the lazy dog.";

fn body(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "prompt": "The quick brown fox"});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

#[tokio::test]
async fn text_prompt_non_streaming() {
    let harness = Harness::new(Script::Reply(REPLY.into()));
    let response = harness.post("/v1/completions", body(json!({}))).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.json();
    let id = body["id"].as_str().expect("id");
    assert!(id.starts_with("cmpl-"), "{id}");
    assert_eq!(response.headers["x-request-id"], id);
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], REPLY);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["choices"][0]["logprobs"].is_null());
    let prompt_tokens = harness
        .tokenizer
        .encode("The quick brown fox", true)
        .expect("encode");
    assert_eq!(body["usage"]["prompt_tokens"], prompt_tokens.len());
    assert_eq!(harness.requests()[0].prompt, prompt_tokens);
}

#[tokio::test]
async fn every_prompt_form_is_accepted() {
    let harness = Harness::new(Script::Reply("x".into()));
    let ids = harness.tokens("abc");
    for prompt in [
        json!("abc"),
        json!(["abc"]),
        json!(ids.clone()),
        json!([ids.clone()]),
    ] {
        let response = harness
            .post("/v1/completions", body(json!({"prompt": prompt})))
            .await;
        assert_eq!(response.status, 200, "{prompt}: {}", response.body);
    }
    let requests = harness.requests();
    assert_eq!(requests[2].prompt, ids);
    assert_eq!(requests[3].prompt, ids);
}

#[tokio::test]
async fn streaming_with_usage_and_echo() {
    let harness = Harness::new(Script::Reply(REPLY.into()));
    let request =
        body(json!({"stream": true, "echo": true, "stream_options": {"include_usage": true}}));
    let response = harness.post("/v1/completions", request).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let chunks = response.sse_chunks();
    let (usage_chunk, rest) = chunks.split_last().expect("chunks");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"],
        harness.tokens(REPLY).len() + 1
    );
    let text: String = rest
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, format!("The quick brown fox{REPLY}"));
    assert!(rest.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(
        rest.last().expect("finish")["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn logprobs_are_parallel_arrays_with_offsets() {
    let harness = Harness::new(Script::Reply("xy".into()));
    let response = harness
        .post(
            "/v1/completions",
            body(json!({"logprobs": 1, "max_tokens": 2})),
        )
        .await;
    let body = response.json();
    let logprobs = &body["choices"][0]["logprobs"];
    assert_eq!(logprobs["tokens"], json!(["x", "y"]));
    assert_eq!(logprobs["token_logprobs"], json!([0.0, -0.125]));
    assert_eq!(logprobs["text_offset"], json!([0, 1]));
    assert_eq!(logprobs["top_logprobs"][1]["y"], -0.125);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn stop_string_ends_a_streamed_completion() {
    let harness = Harness::new(Script::Reply("alpha\n\nbeta".into()));
    let chunks = harness
        .post(
            "/v1/completions",
            body(json!({"stream": true, "stop": "\n\n"})),
        )
        .await
        .sse_chunks();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "alpha");
    assert_eq!(
        chunks.last().expect("chunks")["choices"][0]["finish_reason"],
        "stop"
    );
}
