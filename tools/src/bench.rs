//! One `stator-bench run`: from parsed arguments to a finished report.

use std::sync::Arc;
use std::time::Duration;

use crate::cli::RunArgs;
use crate::client::{Client, ClientBuildError, ClientConfig};
use crate::progress::Progress;
use crate::report::{max_sustained_rate, Report, RunReport};
use crate::runner::{run_shape, Bounds, RunError};
use crate::stats::{summarize, time_series, Slo};
use crate::workload::{
    load_trace, Lengths, LoadShape, PromptBuilder, PromptError, SharedPrefix, TraceError, Workload,
};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// The load levels a run goes through, in order.
pub fn shapes(args: &RunArgs) -> Vec<LoadShape> {
    let arrival = args.arrival.into();
    if let Some(clients) = args.concurrency {
        vec![LoadShape::Concurrency { clients }]
    } else if let Some(rate) = args.rate {
        vec![LoadShape::Rate { rate, arrival }]
    } else if let Some(rates) = &args.sweep {
        rates
            .iter()
            .map(|&rate| LoadShape::Rate { rate, arrival })
            .collect()
    } else {
        vec![LoadShape::Trace {
            time_scale: args.time_scale,
        }]
    }
}

pub fn slo(args: &RunArgs) -> Option<Slo> {
    (args.slo_ttft.is_some() || args.slo_itl.is_some()).then_some(Slo {
        ttft_ms: args.slo_ttft,
        itl_ms: args.slo_itl,
    })
}

pub async fn run_bench(args: &RunArgs, command_line: Vec<String>) -> Result<Report, BenchError> {
    args.validate().map_err(BenchError::Invalid)?;
    let builder = match &args.tokenizer {
        Some(path) => PromptBuilder::from_tokenizer_file(path)?,
        None => PromptBuilder::without_tokenizer(),
    };
    let lengths = match &args.trace {
        Some(path) => Lengths::Trace(load_trace(path)?),
        None => Lengths::Fixed {
            input_tokens: args.input_tokens as usize,
            output_tokens: args.output_tokens,
        },
    };
    let shared_prefix = args
        .prefix_groups
        .zip(args.prefix_tokens)
        .map(|(groups, tokens)| SharedPrefix {
            groups,
            tokens: tokens as usize,
        });
    let client = Arc::new(Client::new(ClientConfig {
        url: args.url.clone(),
        endpoint: args.endpoint,
        model: args.model.clone(),
        api_key: args.api_key.clone(),
        request_timeout: Duration::from_secs_f64(args.request_timeout),
    })?);
    let bounds = Bounds {
        max_requests: args.max_requests,
        duration: args.duration.map(Duration::from_secs_f64),
    };
    let slo = slo(args);
    let started_at = chrono::Utc::now().to_rfc3339();
    let mut runs = Vec::new();
    for shape in shapes(args) {
        // A fresh workload per step: every sweep step sends the same prompts.
        let workload = Workload::new(
            builder.clone(),
            lengths.clone(),
            shared_prefix,
            args.max_input_tokens.map(|cap| cap as usize),
            args.seed,
        )?;
        let total = match (bounds.max_requests, workload.request_count()) {
            (Some(max), Some(len)) => Some(max.min(len as u64)),
            (max, len) => max.or(len.map(|l| l as u64)),
        };
        let label = shape.label();
        tracing::info!(%label, target = client.target(), "starting");
        let progress = Progress::new(&label, total, !args.no_progress);
        let samples = run_shape(
            client.clone(),
            workload,
            &shape,
            bounds,
            args.seed,
            &progress,
        )
        .await;
        progress.finish();
        let samples = samples?;
        runs.push(RunReport {
            label,
            shape,
            summary: summarize(&samples, slo),
            time_series: time_series(&samples),
            samples,
        });
    }
    let max_sustained_rate = match (&args.sweep, slo) {
        (Some(_), Some(_)) => {
            let steps: Vec<(f64, f64)> = runs
                .iter()
                .filter_map(|run| match (&run.shape, run.summary.goodput) {
                    (LoadShape::Rate { rate, .. }, Some(goodput)) => {
                        Some((*rate, goodput.attainment))
                    }
                    _ => None,
                })
                .collect();
            max_sustained_rate(&steps, args.slo_attainment)
        }
        _ => None,
    };
    Ok(Report {
        tool: "stator-bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        command_line,
        started_at,
        target: client.target().to_string(),
        config: serde_json::to_value(args).unwrap_or(serde_json::Value::Null),
        prompt_lengths: prompt_lengths(args),
        runs,
        max_sustained_rate,
    })
}

fn prompt_lengths(args: &RunArgs) -> String {
    let source = match &args.tokenizer {
        Some(path) => format!("exact, fitted with tokenizer {}", path.display()),
        None => "estimated: common English words, one per token in Llama-family BPE".into(),
    };
    format!(
        "{source}; the chat template adds tokens on /chat/completions; \
         usage.prompt_tokens replaces the estimate when the server reports it"
    )
}
