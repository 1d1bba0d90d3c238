//! Test fixtures: a scripted token source that records what it was asked and notices when its
//! stream is dropped, plus helpers to call the router and read SSE bodies.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use stator_gpu::request::{EngineEvent, FinishReason, GenerateRequest, TokenLogprobs, TopLogprob};
use stator_gpu::tokenizer::{ChatMessage, Tokenizer};
use tower::ServiceExt;

use crate::openai::source::{EngineEvents, GenerateError};
use crate::openai::{router, ApiState, TokenSource};

pub const MODEL: &str = "test-model";
pub const CONTEXT_LENGTH: usize = 256;
pub const DEFAULT_MAX_TOKENS: usize = 64;

/// What the scripted source does with the next request.
#[derive(Clone, Debug)]
pub enum Script {
    /// Generates the tokens of `text`, then EOS (or stops at `max_tokens` with `Length`).
    Reply(String),
    /// Refuses to start.
    Refuse(GenerateError),
    /// Generates the tokens of `text`, then never sends anything again.
    Hang(String),
    /// Generates the tokens of `text`, then fails.
    Fail(String),
    /// Generates the tokens of `text`, sending the first `n` token events twice, as a source
    /// that resumed the generation elsewhere might.
    Resend(String, usize),
}

#[derive(Default)]
pub struct Probe {
    pub requests: Mutex<Vec<GenerateRequest>>,
    /// Events handed out by the last stream.
    pub pulled: AtomicUsize,
    pub dropped: AtomicBool,
}

pub struct ScriptedSource {
    tokenizer: Arc<Tokenizer>,
    script: Mutex<Script>,
    pub probe: Arc<Probe>,
}

/// Special tokens of the test vocabulary, at ids 0, 1, 2 (as in SmolLM2).
const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// The tokenizer every test uses: byte-level BPE with no merges, so every byte of text is one
/// token (multi-byte characters span tokens, stop strings span tokens), ChatML, EOS `<|im_end|>`.
pub fn tokenizer() -> Arc<Tokenizer> {
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
        vocab.insert(token.to_string(), json!(id));
        added.push(
            json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}),
        );
    }
    for (byte, symbol) in byte_alphabet().into_iter().enumerate() {
        vocab.insert(symbol.to_string(), json!(byte + SPECIAL_TOKENS.len()));
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let tokenizer_json = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": []}
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, tokenizer_json.to_string()).expect("write tokenizer.json");
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        json!({"eos_token": "<|im_end|>"}).to_string(),
    )
    .expect("write tokenizer_config.json");
    Arc::new(Tokenizer::from_hf_file(&path).expect("test tokenizer"))
}

/// GPT-2's printable stand-ins for the 256 byte values (byte-level BPE's alphabet).
fn byte_alphabet() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next_unprintable = 256;
    (0..256u32)
        .map(|b| {
            let code = if printable(b) {
                b
            } else {
                next_unprintable += 1;
                next_unprintable - 1
            };
            char::from_u32(code).expect("valid code point")
        })
        .collect()
}

/// A logprob entry derived from the token, so tests can predict it.
pub fn logprob_of(index: usize, token: u32, alternative: u32) -> TokenLogprobs {
    TokenLogprobs {
        logprob: -(index as f32) / 8.0,
        top: vec![
            TopLogprob {
                token,
                logprob: -(index as f32) / 8.0,
            },
            TopLogprob {
                token: alternative,
                logprob: -9.0,
            },
        ],
    }
}

/// The text whose token is every logprob entry's second alternative.
pub const ALTERNATIVE: &str = "~";

impl ScriptedSource {
    fn events(
        &self,
        req: &GenerateRequest,
        text: &str,
        ending: Option<EngineEvent>,
    ) -> VecDeque<EngineEvent> {
        let mut tokens = self.tokenizer.encode(text, false).unwrap_or_default();
        if matches!(ending, Some(EngineEvent::Finished { .. })) {
            tokens.push(self.tokenizer.eos_ids()[0]);
        }
        let alternative = self
            .tokenizer
            .encode(ALTERNATIVE, false)
            .unwrap_or_default()[0];
        let max = req.params.max_tokens;
        let reason = if tokens.len() > max {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        tokens.truncate(max);
        let mut events: VecDeque<EngineEvent> = tokens
            .iter()
            .enumerate()
            .map(|(index, &token)| EngineEvent::Token {
                index,
                token,
                logprobs: req
                    .params
                    .logprobs
                    .map(|_| logprob_of(index, token, alternative)),
            })
            .collect();
        match ending {
            Some(EngineEvent::Finished { .. }) => events.push_back(EngineEvent::Finished {
                reason,
                prompt_tokens: req.prompt.len(),
                completion_tokens: tokens.len(),
                cached_tokens: 3,
            }),
            Some(other) => events.push_back(other),
            None => {}
        }
        events
    }
}

/// The stream's state; dropping it (stream finished or dropped by the frontend) is observed.
struct Tracked {
    events: VecDeque<EngineEvent>,
    hang: bool,
    probe: Arc<Probe>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.probe.dropped.store(true, Ordering::SeqCst);
    }
}

impl TokenSource for ScriptedSource {
    fn generate(
        &self,
        req: GenerateRequest,
    ) -> BoxFuture<'static, Result<EngineEvents, GenerateError>> {
        self.probe
            .requests
            .lock()
            .expect("probe lock")
            .push(req.clone());
        self.probe.pulled.store(0, Ordering::SeqCst);
        self.probe.dropped.store(false, Ordering::SeqCst);
        let script = self.script.lock().expect("script lock").clone();
        let finished = Some(EngineEvent::Finished {
            reason: FinishReason::Stop,
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_tokens: 0,
        });
        let (events, hang) = match script {
            Script::Refuse(err) => return Box::pin(async move { Err(err) }),
            Script::Reply(text) => (self.events(&req, &text, finished), false),
            Script::Hang(text) => (self.events(&req, &text, None), true),
            Script::Resend(text, n) => {
                let mut events = self.events(&req, &text, finished);
                let resent: Vec<EngineEvent> = events.iter().take(n).cloned().collect();
                for (at, event) in resent.into_iter().enumerate() {
                    events.insert(n + at, event);
                }
                (events, false)
            }
            Script::Fail(text) => (
                self.events(
                    &req,
                    &text,
                    Some(EngineEvent::Failed {
                        message: "backend step failed".into(),
                    }),
                ),
                false,
            ),
        };
        let tracked = Tracked {
            events,
            hang,
            probe: Arc::clone(&self.probe),
        };
        let stream = stream::unfold(tracked, |mut tracked| async move {
            match tracked.events.pop_front() {
                Some(event) => {
                    tracked.probe.pulled.fetch_add(1, Ordering::SeqCst);
                    Some((event, tracked))
                }
                None if tracked.hang => futures::future::pending().await,
                None => None,
            }
        });
        Box::pin(async move { Ok(stream.boxed()) })
    }
}

pub struct Harness {
    pub router: Router,
    pub tokenizer: Arc<Tokenizer>,
    source: Arc<ScriptedSource>,
}

impl Harness {
    pub fn new(script: Script) -> Self {
        Self::with_context(script, CONTEXT_LENGTH)
    }

    pub fn with_context(script: Script, context_length: usize) -> Self {
        let tokenizer = tokenizer();
        let source = Arc::new(ScriptedSource {
            tokenizer: Arc::clone(&tokenizer),
            script: Mutex::new(script),
            probe: Arc::new(Probe::default()),
        });
        let state = ApiState {
            model_name: MODEL.to_string(),
            tokenizer: Arc::clone(&tokenizer),
            context_length,
            source: Arc::clone(&source) as Arc<dyn TokenSource>,
            default_max_tokens: DEFAULT_MAX_TOKENS,
        };
        Self {
            router: router(Arc::new(state)),
            tokenizer,
            source,
        }
    }

    pub fn probe(&self) -> &Probe {
        &self.source.probe
    }

    pub fn requests(&self) -> Vec<GenerateRequest> {
        self.probe().requests.lock().expect("probe lock").clone()
    }

    pub fn tokens(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, false).expect("encode")
    }

    /// The prompt ids a chat request with one user message turns into.
    pub fn chat_prompt(&self, user: &str) -> Vec<u32> {
        let text = self
            .tokenizer
            .apply_chat_template(
                &[ChatMessage {
                    role: "user".into(),
                    content: user.into(),
                }],
                true,
            )
            .expect("template");
        self.tokens(&text)
    }

    pub async fn call(&self, method: &str, path: &str, body: impl Into<Body>) -> Response {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.into())
            .expect("request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("router is infallible");
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        Response {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(bytes.to_vec()).expect("utf-8 body"),
        }
    }

    pub async fn post(&self, path: &str, json: Value) -> Response {
        self.call("POST", path, json.to_string()).await
    }
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of an SSE body, in order, checking the framing on the way.
    pub fn sse_data(&self) -> Vec<String> {
        assert!(
            self.body.ends_with("\n\n"),
            "SSE body must end with a blank line: {:?}",
            self.body
        );
        self.body
            .split("\n\n")
            .filter(|event| !event.is_empty() && !event.starts_with(':'))
            .map(|event| {
                event
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("event without data line: {event:?}"))
                    .to_string()
            })
            .collect()
    }

    /// The JSON chunks of an SSE body, asserting it ends with `data: [DONE]`.
    pub fn sse_chunks(&self) -> Vec<Value> {
        let mut data = self.sse_data();
        assert_eq!(
            data.pop().as_deref(),
            Some("[DONE]"),
            "stream must end with [DONE]"
        );
        data.iter()
            .map(|d| {
                serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk not JSON ({e}): {d}"))
            })
            .collect()
    }

    pub fn error(&self) -> (Value, Value, Value) {
        let body = self.json();
        let error = &body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error needs a message: {body}"
        );
        (
            error["type"].clone(),
            error["param"].clone(),
            error["code"].clone(),
        )
    }
}
