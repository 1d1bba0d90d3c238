//! Drives one load shape against the server and turns each stream into a `RequestSample`.
//!
//! Open-loop shapes send every request at its scheduled time on a monotonic clock, however
//! many are still in flight, and record how late each left (no coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::client::{Client, RequestError, StreamTiming};
use crate::progress::Progress;
use crate::stats::{tpot_ms, RequestSample, Summary, TokenSource};
use crate::workload::{LoadShape, PromptBuilder, PromptError, RequestSpec, Workload};

/// When to stop sending: whichever bound is reached first. In-flight requests still finish.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bounds {
    pub max_requests: Option<u64>,
    pub duration: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error("a request task failed: {0}")]
    Task(String),
}

/// Requests synthesized ahead of the senders, so prompt building never delays a send.
const PREFETCH: usize = 64;

type Prefetched = Result<RequestSpec, PromptError>;

/// Runs `shape` until `bounds` or the workload ends; samples come back in request order.
pub async fn run_shape(
    client: Arc<Client>,
    workload: Workload,
    shape: &LoadShape,
    bounds: Bounds,
    seed: u64,
    progress: &Progress,
) -> Result<Vec<RequestSample>, RunError> {
    let counter = workload.builder().clone();
    let arrivals = shape.arrivals(workload.trace(), seed);
    let requests = prefetch(workload, bounds.max_requests);
    let mut samples = match arrivals {
        Some(arrivals) => open_loop(client, requests, arrivals, bounds, counter, progress).await?,
        None => {
            // Only the closed loop has no arrival schedule.
            let clients = match shape {
                LoadShape::Concurrency { clients } => *clients,
                _ => 1,
            };
            closed_loop(client, requests, clients, bounds, counter, progress).await?
        }
    };
    samples.sort_by_key(|s| s.index);
    Ok(samples)
}

/// Builds requests on a blocking thread (tokenizer work is CPU-heavy and would otherwise stall
/// the runtime threads that timestamp chunks). It stops at `max_requests`, at the end of the
/// workload, or when the receiver is dropped.
fn prefetch(mut workload: Workload, max_requests: Option<u64>) -> mpsc::Receiver<Prefetched> {
    let (sender, receiver) = mpsc::channel(PREFETCH);
    tokio::task::spawn_blocking(move || {
        for index in 0..max_requests.unwrap_or(u64::MAX) {
            let next = match workload.request(index) {
                Ok(Some(spec)) => Ok(spec),
                Ok(None) => break,
                Err(error) => Err(error),
            };
            let failed = next.is_err();
            if sender.blocking_send(next).is_err() || failed {
                break;
            }
        }
    });
    receiver
}

async fn open_loop(
    client: Arc<Client>,
    mut requests: mpsc::Receiver<Prefetched>,
    arrivals: Box<dyn Iterator<Item = Duration> + Send>,
    bounds: Bounds,
    counter: PromptBuilder,
    progress: &Progress,
) -> Result<Vec<RequestSample>, RunError> {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for offset in arrivals {
        if bounds.duration.is_some_and(|d| offset >= d) {
            break;
        }
        let Some(spec) = requests.recv().await.transpose()? else {
            break;
        };
        let due = start + offset;
        tokio::time::sleep_until(due.into()).await;
        let (client, counter, progress) = (client.clone(), counter.clone(), progress.clone());
        tasks.spawn(async move {
            let sample = execute(&client, &spec, &counter, start, Some(due)).await;
            progress.request_done(sample.ok());
            sample
        });
    }
    let mut samples = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        samples.push(joined.map_err(|e| RunError::Task(e.to_string()))?);
    }
    Ok(samples)
}

async fn closed_loop(
    client: Arc<Client>,
    requests: mpsc::Receiver<Prefetched>,
    clients: u32,
    bounds: Bounds,
    counter: PromptBuilder,
    progress: &Progress,
) -> Result<Vec<RequestSample>, RunError> {
    let start = Instant::now();
    let requests = Arc::new(tokio::sync::Mutex::new(requests));
    let mut workers = JoinSet::new();
    for _ in 0..clients {
        let (client, requests, counter) = (client.clone(), requests.clone(), counter.clone());
        let progress = progress.clone();
        workers.spawn(async move {
            let mut samples = Vec::new();
            loop {
                if bounds.duration.is_some_and(|d| start.elapsed() >= d) {
                    break;
                }
                let Some(spec) = requests.lock().await.recv().await.transpose()? else {
                    break;
                };
                let sample = execute(&client, &spec, &counter, start, None).await;
                progress.request_done(sample.ok());
                samples.push(sample);
            }
            Ok::<_, RunError>(samples)
        });
    }
    let mut samples = Vec::new();
    while let Some(joined) = workers.join_next().await {
        samples.extend(joined.map_err(|e| RunError::Task(e.to_string()))??);
    }
    Ok(samples)
}

/// Sends one request and records it; `due` is its scheduled send time in open-loop shapes.
async fn execute(
    client: &Client,
    spec: &RequestSpec,
    counter: &PromptBuilder,
    run_start: Instant,
    due: Option<Instant>,
) -> RequestSample {
    let sent = Instant::now();
    let result = client.send(spec).await;
    let failed_after = sent.elapsed();
    let mut sample = RequestSample {
        index: spec.index,
        group: spec.group,
        scheduled_s: due.map(|d| d.saturating_duration_since(run_start).as_secs_f64()),
        start_s: sent.saturating_duration_since(run_start).as_secs_f64(),
        lateness_ms: due.map(|d| ms(sent.saturating_duration_since(d))),
        prompt_tokens: spec.prompt.tokens as u64,
        prompt_tokens_source: if spec.prompt.exact {
            TokenSource::Tokenizer
        } else {
            TokenSource::Requested
        },
        max_tokens: spec.max_tokens,
        output_tokens: 0,
        output_tokens_source: TokenSource::Chunks,
        content_chunks: 0,
        ttft_ms: None,
        tpot_ms: None,
        e2e_ms: None,
        itl_ms: None,
        error_kind: None,
        error: None,
        chunk_offsets_ms: Vec::new(),
    };
    match result {
        Ok(timing) => {
            let counted = count_output_tokens(&timing, counter).await;
            record_stream(&mut sample, timing, counted);
        }
        Err(error) => record_error(&mut sample, &error, failed_after),
    }
    sample
}

/// Tokenizer count of the answer, only when the server did not report one; on a blocking
/// thread so the runtime keeps timestamping other streams.
async fn count_output_tokens(timing: &StreamTiming, counter: &PromptBuilder) -> Option<usize> {
    let reported = timing.usage.and_then(|u| u.completion_tokens).is_some();
    if reported || !counter.has_tokenizer() {
        return None;
    }
    let (counter, text) = (counter.clone(), timing.output_text.clone());
    tokio::task::spawn_blocking(move || counter.count_tokens(&text).ok().flatten())
        .await
        .ok()
        .flatten()
}

fn record_stream(sample: &mut RequestSample, timing: StreamTiming, counted: Option<usize>) {
    if let Some(prompt_tokens) = timing.usage.and_then(|u| u.prompt_tokens) {
        sample.prompt_tokens = prompt_tokens;
        sample.prompt_tokens_source = TokenSource::Usage;
    }
    (sample.output_tokens, sample.output_tokens_source) =
        match (timing.usage.and_then(|u| u.completion_tokens), counted) {
            (Some(tokens), _) => (tokens, TokenSource::Usage),
            (None, Some(tokens)) => (tokens as u64, TokenSource::Tokenizer),
            (None, None) => (timing.content_chunks.len() as u64, TokenSource::Chunks),
        };
    sample.chunk_offsets_ms = timing.content_chunks.iter().map(|d| ms(*d)).collect();
    sample.content_chunks = sample.chunk_offsets_ms.len();
    let ttft = sample.chunk_offsets_ms.first().copied();
    let e2e = ms(timing.end);
    sample.ttft_ms = ttft;
    sample.e2e_ms = Some(e2e);
    sample.tpot_ms = ttft.and_then(|t| tpot_ms(t, e2e, sample.output_tokens));
    sample.itl_ms = Summary::of(sample.itls_ms());
}

fn record_error(sample: &mut RequestSample, error: &RequestError, after: Duration) {
    sample.e2e_ms = Some(ms(after));
    sample.error_kind = Some(error.kind());
    sample.error = Some(error.to_string());
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
