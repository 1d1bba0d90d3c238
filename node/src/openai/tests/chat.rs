use serde_json::{json, Value};

use super::support::{Harness, Script, CONTEXT_LENGTH, DEFAULT_MAX_TOKENS, MODEL};

const REPLY: &str = "Hello there, how can I help? é 🦀";

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn non_streaming_reply_has_text_finish_usage_and_request_id() {
    let harness = Harness::new(Script::Reply(REPLY.into()));
    let response = harness
        .post("/v1/chat/completions", chat_body(json!({})))
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.json();
    let id = body["id"].as_str().expect("id");
    assert!(id.starts_with("chatcmpl-") && id.len() > 12, "{id}");
    assert_eq!(response.headers["x-request-id"], id);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    // EOS is generated but its text never reaches the client.
    assert_eq!(body["choices"][0]["message"]["content"], REPLY);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let prompt_tokens = harness.chat_prompt("Hi").len();
    let completion_tokens = harness.tokens(REPLY).len() + 1;
    assert_eq!(body["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(body["usage"]["completion_tokens"], completion_tokens);
    assert_eq!(
        body["usage"]["total_tokens"],
        prompt_tokens + completion_tokens
    );
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
    // The engine got the templated prompt.
    assert_eq!(harness.requests()[0].prompt, harness.chat_prompt("Hi"));
    assert_eq!(harness.requests()[0].id, id);
}

#[tokio::test]
async fn content_parts_are_joined_like_a_string() {
    let harness = Harness::new(Script::Reply("ok".into()));
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "H"}, {"type": "text", "text": "i"}]}]});
    let response = harness.post("/v1/chat/completions", body).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(harness.requests()[0].prompt, harness.chat_prompt("Hi"));
}

#[tokio::test]
async fn streaming_is_framed_as_openai_chunks_ending_in_done() {
    let harness = Harness::new(Script::Reply(REPLY.into()));
    let response = harness
        .post("/v1/chat/completions", chat_body(json!({"stream": true})))
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.headers["content-type"], "text/event-stream");
    let chunks = response.sse_chunks();
    let id = response.headers["x-request-id"].to_str().expect("header");
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id);
        assert!(
            chunk.get("usage").is_none(),
            "no usage unless asked: {chunk}"
        );
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&chunks), REPLY);
    // More than one content chunk: it really streams.
    assert!(chunks.len() > 4, "{} chunks", chunks.len());
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
}

#[tokio::test]
async fn include_usage_adds_a_final_usage_chunk_with_no_choices() {
    let harness = Harness::new(Script::Reply(REPLY.into()));
    let body = chat_body(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let chunks = harness
        .post("/v1/chat/completions", body)
        .await
        .sse_chunks();
    let (usage_chunk, rest) = chunks.split_last().expect("chunks");
    assert_eq!(usage_chunk["choices"], json!([]));
    let completion_tokens = harness.tokens(REPLY).len() + 1;
    assert_eq!(usage_chunk["usage"]["completion_tokens"], completion_tokens);
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens"],
        harness.chat_prompt("Hi").len()
    );
    assert!(rest
        .iter()
        .all(|c| c["usage"].is_null() && c.get("usage").is_some()));
    assert_eq!(
        rest.last().expect("finish chunk")["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn stop_string_cuts_the_text_across_token_boundaries_and_cancels() {
    let reply = "one two STOP three four five six";
    let harness = Harness::new(Script::Reply(reply.into()));
    for stream in [false, true] {
        let body = chat_body(json!({"stream": stream, "stop": ["nomatch", "STOP"]}));
        let response = harness.post("/v1/chat/completions", body).await;
        assert_eq!(response.status, 200, "{}", response.body);
        let (text, finish, completion_tokens) = if stream {
            let chunks = response.sse_chunks();
            let finish = chunks.last().expect("chunks")["choices"][0]["finish_reason"].clone();
            (streamed_text(&chunks), finish, None)
        } else {
            let body = response.json();
            (
                body["choices"][0]["message"]["content"]
                    .as_str()
                    .expect("content")
                    .to_string(),
                body["choices"][0]["finish_reason"].clone(),
                Some(body["usage"]["completion_tokens"].clone()),
            )
        };
        assert_eq!(text, "one two ", "stream={stream}");
        assert_eq!(finish, "stop");
        // The sequence was cancelled right after the token that completed "STOP".
        let consumed = harness.tokens("one two STOP").len();
        assert_eq!(
            harness
                .probe()
                .pulled
                .load(std::sync::atomic::Ordering::SeqCst),
            consumed
        );
        assert!(harness
            .probe()
            .dropped
            .load(std::sync::atomic::Ordering::SeqCst));
        if let Some(tokens) = completion_tokens {
            assert_eq!(tokens, consumed);
        }
    }
}

#[tokio::test]
async fn a_partial_stop_match_is_released_when_it_does_not_complete() {
    let reply = "a STO b ST";
    let harness = Harness::new(Script::Reply(reply.into()));
    let body = chat_body(json!({"stream": true, "stop": "STOP"}));
    let chunks = harness
        .post("/v1/chat/completions", body)
        .await
        .sse_chunks();
    assert_eq!(streamed_text(&chunks), reply);
    assert_eq!(
        chunks.last().expect("chunks")["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn max_tokens_ends_with_length() {
    let harness = Harness::new(Script::Reply(REPLY.into()));
    let body = chat_body(json!({"max_tokens": 5}));
    let body = harness.post("/v1/chat/completions", body).await.json();
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(harness.requests()[0].params.max_tokens, 5);
}

#[tokio::test]
async fn missing_max_tokens_is_clamped_to_the_context_left() {
    let harness = Harness::new(Script::Reply("x".into()));
    harness
        .post("/v1/chat/completions", chat_body(json!({})))
        .await;
    assert_eq!(harness.requests()[0].params.max_tokens, DEFAULT_MAX_TOKENS);

    let prompt = harness.chat_prompt("Hi").len();
    let small = Harness::with_context(Script::Reply("x".into()), prompt + 3);
    let response = small
        .post("/v1/chat/completions", chat_body(json!({})))
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(small.requests()[0].params.max_tokens, 3);
    assert!(CONTEXT_LENGTH > prompt + DEFAULT_MAX_TOKENS);
}

#[tokio::test]
async fn sampling_fields_and_seed_reach_the_engine() {
    let harness = Harness::new(Script::Reply("x".into()));
    let body = chat_body(json!({
        "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 1234,
        "frequency_penalty": 0.5, "presence_penalty": -0.5, "repetition_penalty": 1.2,
        "stop_token_ids": [5], "ignore_eos": true, "user": "ignored", "some_future_field": {"x": 1}
    }));
    let response = harness.post("/v1/chat/completions", body).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let params = &harness.requests()[0].params;
    assert_eq!(
        (params.temperature, params.top_p, params.top_k, params.min_p),
        (0.7, 0.9, 40, 0.05)
    );
    assert_eq!(
        (params.frequency_penalty, params.presence_penalty),
        (0.5, -0.5)
    );
    assert_eq!(params.repetition_penalty, 1.2);
    assert_eq!(params.seed, 1234);
    assert_eq!(params.stop_token_ids, vec![5]);
    assert!(params.ignore_eos);
    assert_eq!(params.logprobs, None);

    // Without a seed each request gets its own, written into the request.
    harness
        .post("/v1/chat/completions", chat_body(json!({})))
        .await;
    harness
        .post("/v1/chat/completions", chat_body(json!({})))
        .await;
    let requests = harness.requests();
    assert_ne!(requests[1].params.seed, requests[2].params.seed);
}

#[tokio::test]
async fn logprobs_come_back_per_token_with_alternatives() {
    let harness = Harness::new(Script::Reply("ab".into()));
    let body = chat_body(json!({"logprobs": true, "top_logprobs": 2}));
    let body = harness.post("/v1/chat/completions", body).await.json();
    assert_eq!(harness.requests()[0].params.logprobs, Some(2));
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs content");
    // "a", "b", and the EOS token.
    assert_eq!(content.len(), harness.tokens("ab").len() + 1);
    assert_eq!(content[0]["token"], "a");
    assert_eq!(content[0]["bytes"], json!([b'a']));
    assert_eq!(content[1]["logprob"], -0.125);
    assert_eq!(
        content[1]["top_logprobs"][1]["token"],
        super::support::ALTERNATIVE
    );
    assert_eq!(content[1]["top_logprobs"][1]["logprob"], -9.0);

    let chunks = harness
        .post(
            "/v1/chat/completions",
            chat_body(json!({"logprobs": true, "stream": true})),
        )
        .await
        .sse_chunks();
    let streamed: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .collect();
    assert_eq!(streamed.len(), harness.tokens("ab").len() + 1);
}

#[tokio::test]
async fn models_are_listed_and_retrievable() {
    let harness = Harness::new(Script::Reply("x".into()));
    let list = harness.call("GET", "/v1/models", "").await;
    assert_eq!(list.status, 200);
    let list = list.json();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], MODEL);
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(list["data"][0]["max_model_len"], CONTEXT_LENGTH);
    let one = harness
        .call("GET", &format!("/v1/models/{MODEL}"), "")
        .await;
    assert_eq!(one.json()["id"], MODEL);
    let missing = harness.call("GET", "/v1/models/other", "").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error().2, "model_not_found");
}

#[tokio::test]
async fn tokens_sent_again_after_a_resume_are_not_repeated() {
    let harness = Harness::new(Script::Resend(REPLY.into(), 4));
    let chunks = harness
        .post("/v1/chat/completions", chat_body(json!({"stream": true})))
        .await
        .sse_chunks();
    assert_eq!(streamed_text(&chunks), REPLY);
}
