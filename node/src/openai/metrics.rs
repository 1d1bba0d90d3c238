//! The frontend's Prometheus series (`stator_frontend_*`), recorded per request.

use std::time::Instant;

use metrics::{gauge, histogram};

/// Which API a request came in on; the `endpoint` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
        }
    }

    /// The prefix of request ids, as OpenAI's.
    pub fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chatcmpl",
            Endpoint::Completions => "cmpl",
        }
    }
}

/// Lives as long as the request (including a streamed body): counts it in-flight while alive and
/// records its duration when dropped, however it ends (done, error, client gone).
pub struct RequestMetrics {
    endpoint: Endpoint,
    started: Instant,
    last_token: Option<Instant>,
}

impl RequestMetrics {
    pub fn start(endpoint: Endpoint) -> Self {
        gauge!("stator_frontend_inflight", "endpoint" => endpoint.label()).increment(1.0);
        Self {
            endpoint,
            started: Instant::now(),
            last_token: None,
        }
    }

    pub fn record_input_tokens(&self, tokens: usize) {
        histogram!("stator_frontend_input_tokens", "endpoint" => self.endpoint.label())
            .record(tokens as f64);
    }

    pub fn record_output_tokens(&self, tokens: usize) {
        histogram!("stator_frontend_output_tokens", "endpoint" => self.endpoint.label())
            .record(tokens as f64);
    }

    pub fn on_token(&mut self) {
        let now = Instant::now();
        match self.last_token {
            None => histogram!("stator_frontend_time_to_first_token_seconds", "endpoint" => self.endpoint.label())
                .record(now.duration_since(self.started).as_secs_f64()),
            Some(previous) => histogram!("stator_frontend_inter_token_latency_seconds", "endpoint" => self.endpoint.label())
                .record(now.duration_since(previous).as_secs_f64()),
        }
        self.last_token = Some(now);
    }
}

impl Drop for RequestMetrics {
    fn drop(&mut self) {
        gauge!("stator_frontend_inflight", "endpoint" => self.endpoint.label()).decrement(1.0);
        histogram!("stator_frontend_request_duration_seconds", "endpoint" => self.endpoint.label())
            .record(self.started.elapsed().as_secs_f64());
    }
}
