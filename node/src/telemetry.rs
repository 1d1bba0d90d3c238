//! Logging and the Prometheus recorder.

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STATOR_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn,quinn=warn")
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Installs the global metrics recorder; `/metrics` renders from the handle.
pub fn install_metrics_recorder() -> Result<PrometheusHandle> {
    // Latency buckets from 100 µs to 60 s cover RPCs, commits, TTFT and whole requests.
    let seconds = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0, 60.0,
    ];
    let tokens = [
        1.0, 4.0, 16.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
        .context("invalid histogram buckets")?
        .set_buckets_for_metric(Matcher::Suffix("_tokens".into()), &tokens)
        .context("invalid histogram buckets")?
        .set_buckets_for_metric(Matcher::Suffix("_commands".into()), &tokens)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")
}
