//! The `stator-bench` binary end to end: exit codes, JSON report, plots, compare, help.

mod binary;
#[allow(dead_code)] // each test binary uses part of the mock
mod support;

use std::path::Path;
use std::process::Output;

use binary::text;
use stator_tools::report::Report;
use support::Cadence;

const BIN: &str = env!("CARGO_BIN_EXE_stator-bench");

async fn stator_bench(args: &[&str]) -> Output {
    binary::run(BIN, args).await
}

fn system_font_present() -> bool {
    [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ]
    .iter()
    .any(|p| Path::new(p).is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_writes_report_and_plots_and_compare_reads_them() {
    let server = support::start(Cadence::new(15, 3)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.json");
    let plots = dir.path().join("plots");
    let output = stator_bench(&[
        "run",
        "--url",
        &server.url,
        "--model",
        "mock",
        "--rate",
        "40",
        "--max-requests",
        "12",
        "--output-tokens",
        "8",
        "--slo-ttft",
        "200",
        "--slo-itl",
        "50",
        "--out",
        out.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
        "--fail-on-error",
    ])
    .await;
    let printed = text(&output);
    if !system_font_present() {
        // The report is still written; the plots need a font and say so.
        assert!(printed.contains("--plot-font"), "{printed}");
        return;
    }
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.contains("TTFT p99 (ms)") && printed.contains("goodput (req/s)"),
        "{printed}"
    );
    let report = Report::load(&out).unwrap();
    assert_eq!(report.runs[0].summary.succeeded, 12);
    assert_eq!(report.command_line[0], BIN);
    assert!(report.command_line.iter().any(|a| a == "--slo-itl"));
    assert_eq!(report.config["rate"], 40.0);
    assert!(
        report.config.get("api_key").is_none(),
        "secrets stay out of reports"
    );
    for name in ["latency_cdf.png", "throughput.png", "ttft_over_time.png"] {
        let png = std::fs::read(plots.join(name)).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 5_000,
            "{name}: {} bytes",
            png.len()
        );
    }

    let compared = stator_bench(&["compare", out.to_str().unwrap(), out.to_str().unwrap()]).await;
    assert!(compared.status.success());
    let compared = text(&compared);
    let line = compared
        .lines()
        .find(|l| l.starts_with("TTFT mean (ms)"))
        .unwrap();
    assert!(line.trim_end().ends_with("1.000x"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_on_error_exits_non_zero_only_when_asked() {
    let server = support::start(Cadence {
        fail_every: 2,
        ..Cadence::new(5, 1)
    })
    .await;
    let base = [
        "run",
        "--url",
        &server.url,
        "--model",
        "mock",
        "--concurrency",
        "1",
        "--max-requests",
        "4",
    ];
    let lenient = stator_bench(&base).await;
    assert!(lenient.status.success(), "{}", text(&lenient));
    assert!(text(&lenient).contains("http_503: 2"), "{}", text(&lenient));
    let strict = stator_bench(&[&base[..], &["--fail-on-error"]].concat()).await;
    assert_eq!(strict.status.code(), Some(3), "{}", text(&strict));
}

#[tokio::test]
async fn bad_input_gets_a_clear_message_and_no_run() {
    let unbounded = stator_bench(&[
        "run",
        "--url",
        "http://127.0.0.1:1",
        "--model",
        "m",
        "--rate",
        "1",
    ])
    .await;
    assert_eq!(unbounded.status.code(), Some(1));
    assert!(
        text(&unbounded).contains("--max-requests or --duration"),
        "{}",
        text(&unbounded)
    );
    let missing_trace = stator_bench(&[
        "run",
        "--url",
        "http://x",
        "--model",
        "m",
        "--trace",
        "/nonexistent.csv",
    ])
    .await;
    assert!(
        text(&missing_trace).contains("/nonexistent.csv"),
        "{}",
        text(&missing_trace)
    );
    let not_a_report = stator_bench(&["compare", BIN, BIN]).await;
    assert!(!not_a_report.status.success());
    let help = stator_bench(&["run", "--help"]).await;
    assert!(text(&help).contains("Examples:") && text(&help).contains("--slo-ttft"));
}
