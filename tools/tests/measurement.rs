//! The bench against a mock server whose cadence is known: the figures it reports must match.

mod support;

use std::time::Duration;

use clap::Parser;
use stator_tools::bench::run_bench;
use stator_tools::cli::{Cli, Command, RunArgs};
use stator_tools::report::Report;
use stator_tools::stats::TokenSource;
use support::Cadence;

fn args(line: &str) -> RunArgs {
    let words = std::iter::once("stator-bench").chain(line.split_whitespace());
    match Cli::try_parse_from(words).unwrap().command {
        Command::Run(run) => *run,
        Command::Compare(_) => unreachable!(),
    }
}

async fn bench(line: &str) -> Report {
    run_bench(
        &args(&format!("run --model mock --no-progress {line}")),
        Vec::new(),
    )
    .await
    .unwrap()
}

fn within(value: f64, low: f64, high: f64, what: &str) {
    assert!(
        (low..=high).contains(&value),
        "{what} = {value}, expected {low}..={high}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_itl_tpot_and_throughput_match_the_server_cadence() {
    let server = support::start(Cadence::new(60, 20)).await;
    let report = bench(&format!(
        "--url {} --concurrency 2 --max-requests 8 --input-tokens 16 --output-tokens 10",
        server.url
    ))
    .await;
    let summary = &report.runs[0].summary;
    assert_eq!((summary.requests, summary.succeeded), (8, 8));
    let ttft = summary.ttft_ms.unwrap();
    within(ttft.mean, 60.0, 100.0, "TTFT mean");
    within(ttft.p50, 60.0, 100.0, "TTFT p50");
    let itl = summary.itl_ms.unwrap();
    assert_eq!(
        itl.count,
        8 * 9,
        "one gap between each of 10 single-token chunks"
    );
    within(itl.mean, 15.0, 25.0, "ITL mean");
    within(itl.p50, 18.0, 25.0, "ITL p50");
    within(summary.tpot_ms.unwrap().mean, 15.0, 25.0, "TPOT mean");
    // 60 ms to the first token, then 9 gaps of 20 ms.
    within(summary.e2e_ms.unwrap().mean, 240.0, 300.0, "E2E mean");
    // Two clients, each request ~240 ms: ~8.3 requests/s at best, ~4.2 if serialized.
    within(summary.request_throughput, 5.5, 8.4, "request throughput");
    within(
        summary.output_token_throughput,
        55.0,
        84.0,
        "output token throughput",
    );
    assert_eq!(summary.output_tokens, 80);
    assert_eq!(
        summary.prompt_tokens,
        8 * 16,
        "prompt tokens from the server's usage"
    );
    let sample = &report.runs[0].samples[0];
    assert_eq!(sample.output_tokens_source, TokenSource::Usage);
    assert_eq!(sample.content_chunks, 10);
    // Closed loop: never more than two in flight, and the two connections were reused.
    assert_eq!(
        server
            .counters
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    let connections = server
        .counters
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(connections <= 2, "{connections} connections for 8 requests");
    let series = &report.runs[0].time_series;
    let streamed: f64 = series.iter().map(|b| b.output_tokens).sum();
    assert!(
        (streamed - 80.0).abs() < 1e-9,
        "time series holds every token: {streamed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_chunks_give_per_chunk_itl_and_usage_based_tpot() {
    let server = support::start(Cadence {
        tokens_per_chunk: 4,
        ..Cadence::new(50, 30)
    })
    .await;
    let report = bench(&format!(
        "--url {} --endpoint completions --concurrency 1 --max-requests 3 --output-tokens 12",
        server.url
    ))
    .await;
    let summary = &report.runs[0].summary;
    assert_eq!(summary.succeeded, 3);
    within(summary.itl_ms.unwrap().mean, 25.0, 40.0, "ITL per chunk");
    // Two 30 ms gaps spread over the 11 tokens after the first (per chunk it would be 30 ms);
    // a late first chunk shortens the decode span, hence the lower margin.
    within(
        summary.tpot_ms.unwrap().mean,
        50.0 / 11.0,
        75.0 / 11.0,
        "TPOT",
    );
    assert!(report.runs[0]
        .samples
        .iter()
        .all(|s| s.content_chunks == 3 && s.output_tokens == 12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_on_schedule_even_when_the_server_is_slow() {
    let server = support::start(Cadence::new(400, 10)).await;
    let report = bench(&format!(
        "--url {} --rate 20 --arrival constant --max-requests 10 --output-tokens 2",
        server.url
    ))
    .await;
    let run = &report.runs[0];
    assert_eq!(run.summary.succeeded, 10);
    for (i, sample) in run.samples.iter().enumerate() {
        let due = i as f64 * 0.05;
        assert!((sample.scheduled_s.unwrap() - due).abs() < 1e-6);
        within(
            sample.start_s,
            due,
            due + 0.05,
            &format!("send time of request {i}"),
        );
    }
    within(
        run.summary.lateness_ms.unwrap().p99,
        0.0,
        50.0,
        "lateness p99",
    );
    // Each request takes 400+ ms and one leaves every 50 ms, so they pile up as they would
    // for real users; a closed loop would have kept one at a time.
    let max_in_flight = server
        .counters
        .max_in_flight
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(max_in_flight >= 7, "max in flight {max_in_flight}");
    within(run.summary.ttft_ms.unwrap().p50, 400.0, 460.0, "TTFT p50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_classified_and_goodput_counts_only_requests_meeting_slos() {
    let failing = support::start(Cadence {
        fail_every: 3,
        ..Cadence::new(20, 5)
    })
    .await;
    let report = bench(&format!(
        "--url {} --concurrency 1 --max-requests 9 --output-tokens 4 --slo-ttft 1000 --slo-itl 100",
        failing.url
    ))
    .await;
    let summary = &report.runs[0].summary;
    assert_eq!(summary.errors_by_kind.get("http_503"), Some(&3));
    let goodput = summary.goodput.unwrap();
    assert_eq!(goodput.good_requests, 6);
    within(goodput.attainment, 0.666, 0.667, "attainment");
    assert!(report.failed_requests() == 3);
    let failed = report.runs[0].samples.iter().find(|s| !s.ok()).unwrap();
    assert!(failed.error.as_deref().unwrap().contains("overloaded"));

    // A TTFT objective below the server's cadence: nothing is good.
    let strict = bench(&format!(
        "--url {} --concurrency 1 --max-requests 3 --output-tokens 4 --slo-ttft 5",
        failing.url
    ))
    .await;
    assert_eq!(strict.runs[0].summary.goodput.unwrap().good_requests, 0);

    let broken = support::start(Cadence {
        break_after: Some(2),
        ..Cadence::new(10, 5)
    })
    .await;
    let report = bench(&format!(
        "--url {} --concurrency 2 --max-requests 4",
        broken.url
    ))
    .await;
    assert_eq!(
        report.runs[0].summary.errors_by_kind.get("stream_broken"),
        Some(&4)
    );

    let slow = support::start(Cadence::new(5_000, 5)).await;
    let report = bench(&format!(
        "--url {} --concurrency 2 --max-requests 2 --request-timeout 0.3",
        slow.url
    ))
    .await;
    assert_eq!(
        report.runs[0].summary.errors_by_kind.get("timeout"),
        Some(&2)
    );
    let e2e = report.runs[0].samples[0].e2e_ms.unwrap();
    within(e2e, 300.0, 400.0, "time to the timeout");

    let report = bench("--url http://127.0.0.1:1 --concurrency 1 --max-requests 2").await;
    assert_eq!(
        report.runs[0].summary.errors_by_kind.get("connect"),
        Some(&2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_replay_follows_recorded_times_scaled_and_capped() {
    let server = support::start(Cadence::new(10, 2)).await;
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.csv");
    std::fs::write(
        &trace,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n\
         2023-11-16 18:00:00.000,30,3\n\
         2023-11-16 18:00:00.200,40,4\n\
         2023-11-16 18:00:00.400,500,5\n\
         2023-11-16 18:00:01.000,60,6\n\
         2023-11-16 18:00:01.200,70,7\n",
    )
    .unwrap();
    let report = bench(&format!(
        "--url {} --trace {} --time-scale 0.5 --max-requests 4 --max-input-tokens 100",
        server.url,
        trace.display()
    ))
    .await;
    let samples = &report.runs[0].samples;
    assert_eq!(samples.len(), 4, "--max-requests caps the replay");
    for (sample, (due, prompt, output)) in
        samples
            .iter()
            .zip([(0.0, 30, 3), (0.1, 40, 4), (0.2, 100, 5), (0.5, 60, 6)])
    {
        within(sample.start_s, due, due + 0.05, "replayed send time");
        assert_eq!(
            sample.prompt_tokens, prompt,
            "prompt length (server-counted words)"
        );
        assert_eq!(sample.output_tokens, output);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_runs_each_rate_and_finds_the_highest_sustained_one() {
    let server = support::start(Cadence::new(20, 5)).await;
    let report = bench(&format!(
        "--url {} --sweep 10,20 --arrival constant --max-requests 4 --output-tokens 3 --slo-ttft 500",
        server.url
    ))
    .await;
    assert_eq!(report.runs.len(), 2);
    assert_eq!(report.runs[1].label, "rate=20/s (constant)");
    assert!(report.runs.iter().all(|r| r.summary.succeeded == 4));
    assert_eq!(report.max_sustained_rate, Some(20.0));
    // Each step is bounded on its own and sends the same prompts.
    let duration = Duration::from_secs_f64(report.runs[1].samples[3].start_s);
    assert!(duration < Duration::from_millis(250), "{duration:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_bound_stops_sending_and_lets_in_flight_requests_finish() {
    let server = support::start(Cadence::new(100, 10)).await;
    for shape in ["--concurrency 2", "--rate 20 --arrival constant"] {
        let report = bench(&format!(
            "--url {} {shape} --duration 0.5 --output-tokens 5",
            server.url
        ))
        .await;
        let run = &report.runs[0];
        assert!(
            run.summary.requests >= 6,
            "{shape}: {} requests",
            run.summary.requests
        );
        assert_eq!(
            run.summary.succeeded, run.summary.requests,
            "{shape}: none cut off"
        );
        let last_send = run.samples.iter().map(|s| s.start_s).fold(0.0, f64::max);
        assert!(last_send < 0.5, "{shape}: sent at {last_send}s");
        // The last ones were still streaming at 0.5 s and were waited for.
        assert!(
            run.summary.duration_s > 0.5,
            "{shape}: {}",
            run.summary.duration_s
        );
    }
}
