//! Figures from samples: percentiles, throughput, goodput and per-second time series. Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a token count came from, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// The server's `usage` object.
    Usage,
    /// The `--tokenizer` given to the bench.
    Tokenizer,
    /// One token per content chunk (exact only for servers that send one token per chunk).
    Chunks,
    /// The length the bench asked for (prompts without tokenizer or usage).
    Requested,
}

/// One request as the report keeps it. Times in milliseconds, offsets in seconds from the
/// start of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSample {
    pub index: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group: Option<u32>,
    /// When the schedule wanted it sent (open-loop shapes only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scheduled_s: Option<f64>,
    pub start_s: f64,
    /// How far behind schedule it actually went out (open-loop shapes only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lateness_ms: Option<f64>,
    pub prompt_tokens: u64,
    pub prompt_tokens_source: TokenSource,
    pub max_tokens: u32,
    pub output_tokens: u64,
    pub output_tokens_source: TokenSource,
    pub content_chunks: usize,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
    /// Summary of this request's gaps between content chunks.
    pub itl_ms: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Arrival of each content chunk, ms after the request was sent. Kept in memory for the
    /// time series and ITL figures; the JSON keeps only `itl_ms`.
    #[serde(skip)]
    pub chunk_offsets_ms: Vec<f64>,
}

impl RequestSample {
    pub fn ok(&self) -> bool {
        self.error_kind.is_none()
    }

    /// Gaps between consecutive content chunks.
    pub fn itls_ms(&self) -> impl Iterator<Item = f64> + '_ {
        self.chunk_offsets_ms.windows(2).map(|w| w[1] - w[0])
    }

    /// Offset from run start at which the request ended (ok or not), if known.
    pub fn end_s(&self) -> f64 {
        self.start_s + self.e2e_ms.unwrap_or(0.0) / 1e3
    }
}

/// TPOT: decode time spread over the tokens after the first.
pub fn tpot_ms(ttft_ms: f64, e2e_ms: f64, output_tokens: u64) -> Option<f64> {
    (output_tokens > 1).then(|| (e2e_ms - ttft_ms) / (output_tokens - 1) as f64)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no values. Percentiles interpolate linearly between ranks (numpy's default).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Summary> {
        let mut sorted: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            count: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: percentile(&sorted, 0.50),
            p90: percentile(&sorted, 0.90),
            p99: percentile(&sorted, 0.99),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// `sorted` must be ascending and non-empty; `q` in [0, 1].
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let low = rank.floor() as usize;
    let high = rank.ceil() as usize;
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// Service-level objectives for goodput. A request meets them when it succeeded, its TTFT is
/// within `ttft_ms` and its TPOT (mean time per output token after the first) within `itl_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub itl_ms: Option<f64>,
}

impl Slo {
    pub fn met_by(&self, sample: &RequestSample) -> bool {
        let within = |limit: Option<f64>, value: Option<f64>| match limit {
            None => true,
            Some(limit) => value.is_some_and(|v| v <= limit),
        };
        // A single-token answer has no TPOT and so cannot violate the ITL objective.
        let tpot_ok = self.itl_ms.is_none()
            || sample.output_tokens <= 1
            || within(self.itl_ms, sample.tpot_ms);
        sample.ok() && within(self.ttft_ms, sample.ttft_ms) && tpot_ok
    }
}

/// Goodput as in DistServe: the rate of requests that met every SLO.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Goodput {
    pub slo: Slo,
    pub good_requests: usize,
    /// Share of all sent requests (failures included) that met the SLOs.
    pub attainment: f64,
    pub requests_per_s: f64,
}

pub fn goodput(samples: &[RequestSample], slo: Slo, duration_s: f64) -> Goodput {
    let good_requests = samples.iter().filter(|s| slo.met_by(s)).count();
    Goodput {
        slo,
        good_requests,
        attainment: if samples.is_empty() {
            0.0
        } else {
            good_requests as f64 / samples.len() as f64
        },
        requests_per_s: per_second(good_requests as f64, duration_s),
    }
}

fn per_second(amount: f64, duration_s: f64) -> f64 {
    if duration_s > 0.0 {
        amount / duration_s
    } else {
        0.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub requests: usize,
    pub succeeded: usize,
    pub errors_by_kind: BTreeMap<String, usize>,
    /// From the first send to the last request's end.
    pub duration_s: f64,
    pub request_throughput: f64,
    pub output_token_throughput: f64,
    /// Prompt plus output tokens per second.
    pub total_token_throughput: f64,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub ttft_ms: Option<Summary>,
    /// Every gap between content chunks of every successful request.
    pub itl_ms: Option<Summary>,
    pub tpot_ms: Option<Summary>,
    pub e2e_ms: Option<Summary>,
    pub lateness_ms: Option<Summary>,
    pub goodput: Option<Goodput>,
}

pub fn summarize(samples: &[RequestSample], slo: Option<Slo>) -> RunSummary {
    let ok: Vec<&RequestSample> = samples.iter().filter(|s| s.ok()).collect();
    let mut errors_by_kind = BTreeMap::new();
    for kind in samples.iter().filter_map(|s| s.error_kind.as_ref()) {
        *errors_by_kind.entry(kind.clone()).or_insert(0) += 1;
    }
    let first_start = samples
        .iter()
        .map(|s| s.start_s)
        .fold(f64::INFINITY, f64::min);
    let last_end = samples
        .iter()
        .map(RequestSample::end_s)
        .fold(f64::NEG_INFINITY, f64::max);
    let duration_s = if samples.is_empty() {
        0.0
    } else {
        (last_end - first_start).max(0.0)
    };
    let prompt_tokens: u64 = ok.iter().map(|s| s.prompt_tokens).sum();
    let output_tokens: u64 = ok.iter().map(|s| s.output_tokens).sum();
    RunSummary {
        requests: samples.len(),
        succeeded: ok.len(),
        errors_by_kind,
        duration_s,
        request_throughput: per_second(ok.len() as f64, duration_s),
        output_token_throughput: per_second(output_tokens as f64, duration_s),
        total_token_throughput: per_second((prompt_tokens + output_tokens) as f64, duration_s),
        prompt_tokens,
        output_tokens,
        ttft_ms: Summary::of(ok.iter().filter_map(|s| s.ttft_ms)),
        itl_ms: Summary::of(ok.iter().flat_map(|s| s.itls_ms())),
        tpot_ms: Summary::of(ok.iter().filter_map(|s| s.tpot_ms)),
        e2e_ms: Summary::of(ok.iter().filter_map(|s| s.e2e_ms)),
        lateness_ms: Summary::of(samples.iter().filter_map(|s| s.lateness_ms)),
        goodput: slo.map(|slo| goodput(samples, slo, duration_s)),
    }
}

/// What happened during one wall-clock second of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecondBucket {
    pub second: u64,
    pub started: usize,
    pub completed: usize,
    pub errors: usize,
    /// Tokens whose chunks arrived in this second.
    pub output_tokens: f64,
    /// Requests in flight at the end of the second.
    pub in_flight: usize,
    /// Mean TTFT of requests whose first token arrived in this second.
    pub ttft_mean_ms: Option<f64>,
}

pub fn time_series(samples: &[RequestSample]) -> Vec<SecondBucket> {
    let last_end = samples.iter().map(RequestSample::end_s).fold(0.0, f64::max);
    let seconds = last_end.floor() as usize + 1;
    if samples.is_empty() {
        return Vec::new();
    }
    let mut buckets: Vec<SecondBucket> = (0..seconds)
        .map(|second| SecondBucket {
            second: second as u64,
            ..SecondBucket::default()
        })
        .collect();
    let bucket_of = |offset_s: f64| (offset_s.max(0.0).floor() as usize).min(seconds - 1);
    let mut ttft_sums = vec![(0.0, 0usize); seconds];
    for sample in samples {
        let start = bucket_of(sample.start_s);
        let end = bucket_of(sample.end_s());
        buckets[start].started += 1;
        if sample.ok() {
            buckets[end].completed += 1;
        } else {
            buckets[end].errors += 1;
        }
        // In flight at the end of every second it spans except the one it finished in.
        for bucket in &mut buckets[start..end] {
            bucket.in_flight += 1;
        }
        if !sample.ok() || sample.chunk_offsets_ms.is_empty() {
            continue;
        }
        // Chunks may each carry several tokens; spread the counted tokens over them evenly.
        let tokens_per_chunk = sample.output_tokens as f64 / sample.chunk_offsets_ms.len() as f64;
        for offset_ms in &sample.chunk_offsets_ms {
            buckets[bucket_of(sample.start_s + offset_ms / 1e3)].output_tokens += tokens_per_chunk;
        }
        if let Some(ttft) = sample.ttft_ms {
            let slot = &mut ttft_sums[bucket_of(sample.start_s + ttft / 1e3)];
            slot.0 += ttft;
            slot.1 += 1;
        }
    }
    for (bucket, (sum, count)) in buckets.iter_mut().zip(ttft_sums) {
        bucket.ttft_mean_ms = (count > 0).then(|| sum / count as f64);
    }
    buckets
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A successful request sent at `start_s` whose chunks arrived at `chunks_ms` after sending.
    pub(crate) fn sample(index: u64, start_s: f64, chunks_ms: &[f64]) -> RequestSample {
        let ttft = chunks_ms[0];
        let e2e = chunks_ms[chunks_ms.len() - 1];
        let tokens = chunks_ms.len() as u64;
        RequestSample {
            index,
            group: None,
            scheduled_s: None,
            start_s,
            lateness_ms: None,
            prompt_tokens: 10,
            prompt_tokens_source: TokenSource::Requested,
            max_tokens: tokens as u32,
            output_tokens: tokens,
            output_tokens_source: TokenSource::Chunks,
            content_chunks: chunks_ms.len(),
            ttft_ms: Some(ttft),
            tpot_ms: tpot_ms(ttft, e2e, tokens),
            e2e_ms: Some(e2e),
            itl_ms: None,
            error_kind: None,
            error: None,
            chunk_offsets_ms: chunks_ms.to_vec(),
        }
    }

    fn failed(index: u64, start_s: f64, kind: &str) -> RequestSample {
        RequestSample {
            error_kind: Some(kind.into()),
            error: Some("boom".into()),
            ttft_ms: None,
            tpot_ms: None,
            e2e_ms: Some(5.0),
            chunk_offsets_ms: Vec::new(),
            ..sample(index, start_s, &[1.0])
        }
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let values: Vec<f64> = (1..=101).map(f64::from).collect();
        let summary = Summary::of(values).unwrap();
        assert_eq!(
            (summary.p50, summary.p90, summary.p99, summary.max),
            (51.0, 91.0, 100.0, 101.0)
        );
        assert_eq!(summary.mean, 51.0);
        assert_eq!(percentile(&[10.0, 20.0], 0.5), 15.0);
        assert_eq!(Summary::of([7.0]).unwrap().p99, 7.0);
        assert!(Summary::of(Vec::<f64>::new()).is_none());
    }

    #[test]
    fn tpot_spreads_decode_time_over_tokens_after_the_first() {
        assert_eq!(tpot_ms(100.0, 190.0, 10), Some(10.0));
        assert_eq!(tpot_ms(100.0, 100.0, 1), None);
    }

    #[test]
    fn goodput_counts_requests_meeting_both_slos() {
        let samples = vec![
            sample(0, 0.0, &[100.0, 110.0, 120.0]), // ttft 100, tpot 10: good
            sample(1, 0.0, &[300.0, 310.0, 320.0]), // ttft too slow
            sample(2, 0.0, &[100.0, 200.0, 300.0]), // tpot 100: too slow
            sample(3, 0.0, &[150.0]),               // one token, ttft ok: good
            failed(4, 0.0, "timeout"),
        ];
        let slo = Slo {
            ttft_ms: Some(200.0),
            itl_ms: Some(50.0),
        };
        let result = goodput(&samples, slo, 2.0);
        assert_eq!(result.good_requests, 2);
        assert_eq!(result.requests_per_s, 1.0);
        assert!((result.attainment - 0.4).abs() < 1e-12);
        let only_ttft = goodput(
            &samples,
            Slo {
                ttft_ms: Some(200.0),
                itl_ms: None,
            },
            1.0,
        );
        assert_eq!(only_ttft.good_requests, 3);
    }

    #[test]
    fn summary_throughput_and_errors() {
        let samples = vec![
            sample(0, 0.0, &[100.0, 200.0, 300.0, 400.0]),
            sample(1, 1.0, &[100.0, 200.0, 300.0, 1000.0]),
            failed(2, 1.5, "http_503"),
            failed(3, 1.6, "http_503"),
        ];
        let summary = summarize(&samples, None);
        assert_eq!((summary.requests, summary.succeeded), (4, 2));
        assert_eq!(summary.errors_by_kind.get("http_503"), Some(&2));
        assert!((summary.duration_s - 2.0).abs() < 1e-9);
        assert_eq!(summary.request_throughput, 1.0);
        assert_eq!(summary.output_token_throughput, 4.0);
        assert_eq!(summary.total_token_throughput, 14.0);
        let itl = summary.itl_ms.unwrap();
        assert_eq!(itl.count, 6);
        assert_eq!(itl.max, 700.0);
        assert_eq!(summary.ttft_ms.unwrap().mean, 100.0);
        assert!(summary.goodput.is_none());
    }

    #[test]
    fn time_series_buckets_by_arrival_second() {
        let samples = vec![
            sample(0, 0.2, &[100.0, 900.0, 1900.0]), // tokens at 0.3s, 1.1s, 2.1s
            sample(1, 1.5, &[200.0, 300.0]),         // tokens at 1.7s, 1.8s
        ];
        let series = time_series(&samples);
        assert_eq!(series.len(), 3);
        let tokens: Vec<f64> = series.iter().map(|b| b.output_tokens).collect();
        assert_eq!(tokens, vec![1.0, 3.0, 1.0]);
        let started: Vec<usize> = series.iter().map(|b| b.started).collect();
        assert_eq!(started, vec![1, 1, 0]);
        let completed: Vec<usize> = series.iter().map(|b| b.completed).collect();
        assert_eq!(completed, vec![0, 1, 1]);
        let in_flight: Vec<usize> = series.iter().map(|b| b.in_flight).collect();
        assert_eq!(in_flight, vec![1, 1, 0]);
        assert_eq!(series[0].ttft_mean_ms, Some(100.0));
        assert_eq!(series[1].ttft_mean_ms, Some(200.0));
        assert_eq!(series[2].ttft_mean_ms, None);
    }
}
