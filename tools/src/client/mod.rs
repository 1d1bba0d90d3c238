//! The streaming OpenAI client: one pooled HTTP client (connections are reused across
//! requests), one POST per request, timestamps taken on a monotonic clock as bytes arrive.

pub mod chunk;
pub mod sse;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::workload::RequestSpec;
pub use chunk::{clip, parse_chunk, Chunk, Usage};
pub use sse::SseDecoder;

/// Which OpenAI route to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `/v1/chat/completions`, prompt sent as one user message.
    Chat,
    /// `/v1/completions`, prompt sent raw.
    Completions,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL such as `http://127.0.0.1:8000` (a trailing `/v1` is accepted).
    pub url: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub api_key: Option<String>,
    pub request_timeout: Duration,
}

/// Why a request failed; `kind()` is the bucket the report counts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("http status {status}: {body}")]
    HttpStatus { status: u16, body: String },
    #[error("timeout after {0:?}")]
    Timeout(Duration),
    #[error("stream broken: {0}")]
    StreamBroken(String),
    #[error("invalid response: {0}")]
    InvalidResponse(String),
}

impl RequestError {
    pub fn kind(&self) -> String {
        match self {
            RequestError::Connect(_) => "connect".into(),
            RequestError::HttpStatus { status, .. } => format!("http_{status}"),
            RequestError::Timeout(_) => "timeout".into(),
            RequestError::StreamBroken(_) => "stream_broken".into(),
            RequestError::InvalidResponse(_) => "invalid_response".into(),
        }
    }
}

/// What one successful stream looked like, times measured from just before the request left.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamTiming {
    /// Arrival of every chunk that carried generated text; the first is the TTFT.
    pub content_chunks: Vec<Duration>,
    /// End of the stream (`[DONE]` or the body's end).
    pub end: Duration,
    pub output_text: String,
    pub usage: Option<Usage>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build HTTP client: {0}")]
pub struct ClientBuildError(String);

pub struct Client {
    http: reqwest::Client,
    target: String,
    config: ClientConfig,
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| ClientBuildError(e.to_string()))?;
        Ok(Self {
            http,
            target: endpoint_url(&config.url, config.endpoint),
            config,
        })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// The JSON body: always streaming with usage, and an output length forced three ways
    /// (`max_tokens`, `ignore_eos`, vLLM's `min_tokens`) so every server generates the same.
    pub fn body(&self, spec: &RequestSpec) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "max_tokens": spec.max_tokens,
            "min_tokens": spec.max_tokens,
            "ignore_eos": true,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        let prompt = Value::String(spec.prompt.text.clone());
        match self.config.endpoint {
            Endpoint::Chat => body["messages"] = json!([{ "role": "user", "content": prompt }]),
            Endpoint::Completions => body["prompt"] = prompt,
        }
        body
    }

    /// Sends one request and reads its stream to the end, within the request deadline.
    pub async fn send(&self, spec: &RequestSpec) -> Result<StreamTiming, RequestError> {
        let deadline = self.config.request_timeout;
        let body = self.body(spec);
        let start = Instant::now();
        match tokio::time::timeout(deadline, self.stream(body, start)).await {
            Ok(result) => result,
            Err(_) => Err(RequestError::Timeout(deadline)),
        }
    }

    async fn stream(&self, body: Value, start: Instant) -> Result<StreamTiming, RequestError> {
        let mut request = self.http.post(&self.target).json(&body);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let mut response = request.send().await.map_err(classify_send_error)?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(RequestError::HttpStatus {
                status: status.as_u16(),
                body: clip(text.trim()),
            });
        }
        let mut reader = StreamReader::default();
        loop {
            let bytes = match response.chunk().await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => break,
                Err(e) => return Err(RequestError::StreamBroken(e.to_string())),
            };
            let arrived = start.elapsed();
            for event in reader.decoder.push(&bytes) {
                reader.event(&event, arrived)?;
            }
            if reader.done {
                drain_for_reuse(&mut response).await;
                return reader.finish(arrived);
            }
        }
        let ended = start.elapsed();
        if let Some(event) = reader.decoder.finish() {
            reader.event(&event, ended)?;
        }
        reader.finish(ended)
    }
}

/// Reads what follows `[DONE]` (the end of the chunked body) so the connection goes back to
/// the pool instead of being closed; a server that keeps the stream open only costs the grace.
async fn drain_for_reuse(response: &mut reqwest::Response) {
    const GRACE: Duration = Duration::from_millis(500);
    let _ = tokio::time::timeout(GRACE, async {
        while let Ok(Some(_)) = response.chunk().await {}
    })
    .await;
}

/// Folds SSE events into a `StreamTiming`.
#[derive(Default)]
struct StreamReader {
    decoder: SseDecoder,
    content_chunks: Vec<Duration>,
    output_text: String,
    usage: Option<Usage>,
    events: usize,
    finished: bool,
    done: bool,
}

impl StreamReader {
    fn event(&mut self, data: &str, arrived: Duration) -> Result<(), RequestError> {
        self.events += 1;
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk = parse_chunk(data).map_err(RequestError::InvalidResponse)?;
        if !chunk.content.is_empty() {
            self.content_chunks.push(arrived);
            self.output_text.push_str(&chunk.content);
        }
        self.finished |= chunk.finish_reason.is_some();
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        Ok(())
    }

    fn finish(self, end: Duration) -> Result<StreamTiming, RequestError> {
        if self.events == 0 {
            return Err(RequestError::InvalidResponse(
                "response is not an SSE stream".into(),
            ));
        }
        if !self.done && !self.finished {
            return Err(RequestError::StreamBroken(
                "stream ended before [DONE] or a finish_reason".into(),
            ));
        }
        if self.content_chunks.is_empty() {
            return Err(RequestError::InvalidResponse(
                "stream carried no generated text".into(),
            ));
        }
        Ok(StreamTiming {
            content_chunks: self.content_chunks,
            end,
            output_text: self.output_text,
            usage: self.usage,
        })
    }
}

fn classify_send_error(error: reqwest::Error) -> RequestError {
    if error.is_connect() {
        RequestError::Connect(error.to_string())
    } else if error.is_builder() {
        RequestError::InvalidResponse(format!("bad request URL: {error}"))
    } else {
        // Reset or closed before the response head: the connection failed, not the stream.
        RequestError::Connect(format!(
            "{error} ({:?})",
            std::error::Error::source(&error).map(ToString::to_string)
        ))
    }
}

/// `http://h:8000` and `http://h:8000/v1` both become `http://h:8000/v1/<route>`.
pub fn endpoint_url(base: &str, endpoint: Endpoint) -> String {
    let base = base.trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    let route = match endpoint {
        Endpoint::Chat => "chat/completions",
        Endpoint::Completions => "completions",
    };
    format!("{base}/v1/{route}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Prompt;

    fn spec() -> RequestSpec {
        RequestSpec {
            index: 0,
            group: None,
            prompt: Prompt {
                text: "hello there".into(),
                tokens: 2,
                exact: false,
            },
            max_tokens: 9,
        }
    }

    fn client(endpoint: Endpoint) -> Client {
        Client::new(ClientConfig {
            url: "http://127.0.0.1:1/v1/".into(),
            endpoint,
            model: "m".into(),
            api_key: None,
            request_timeout: Duration::from_secs(1),
        })
        .unwrap()
    }

    #[test]
    fn url_joins_with_or_without_v1() {
        assert_eq!(
            endpoint_url("http://h:8000", Endpoint::Chat),
            "http://h:8000/v1/chat/completions"
        );
        assert_eq!(
            endpoint_url("http://h:8000/v1/", Endpoint::Completions),
            "http://h:8000/v1/completions"
        );
    }

    #[test]
    fn body_forces_length_and_streams_with_usage() {
        let chat = client(Endpoint::Chat).body(&spec());
        assert_eq!(chat["messages"][0]["content"], "hello there");
        assert_eq!(chat["max_tokens"], 9);
        assert_eq!(chat["min_tokens"], 9);
        assert_eq!(chat["ignore_eos"], true);
        assert_eq!(chat["stream"], true);
        assert_eq!(chat["stream_options"]["include_usage"], true);
        let completions = client(Endpoint::Completions).body(&spec());
        assert_eq!(completions["prompt"], "hello there");
        assert!(completions.get("messages").is_none());
    }

    #[test]
    fn reader_counts_only_content_chunks_and_requires_an_end() {
        let mut reader = StreamReader::default();
        let ms = Duration::from_millis;
        reader
            .event(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#, ms(5))
            .unwrap();
        reader
            .event(r#"{"choices":[{"delta":{"content":"a"}}]}"#, ms(10))
            .unwrap();
        reader
            .event(r#"{"choices":[{"delta":{"content":"b"}}]}"#, ms(20))
            .unwrap();
        let timing = reader.finish(ms(21));
        assert!(
            matches!(timing, Err(RequestError::StreamBroken(_))),
            "no [DONE], no finish_reason"
        );

        let mut reader = StreamReader::default();
        reader
            .event(r#"{"choices":[{"delta":{"content":"a"}}]}"#, ms(10))
            .unwrap();
        reader
            .event(
                r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#,
                ms(11),
            )
            .unwrap();
        let timing = reader.finish(ms(12)).unwrap();
        assert_eq!(timing.content_chunks, vec![ms(10)]);
        assert_eq!(timing.end, ms(12));
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let err = client(Endpoint::Chat).send(&spec()).await.unwrap_err();
        assert_eq!(err.kind(), "connect", "{err}");
    }
}
