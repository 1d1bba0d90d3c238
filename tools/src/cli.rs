//! Command-line interface of `stator-bench`.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};
use serde::Serialize;

use crate::client::Endpoint;
use crate::schedule::Arrival;

const EXAMPLES: &str = "\
Examples:
  # 200 requests, 8 clients always busy, 512-token prompts, 128-token answers
  stator-bench run --url http://127.0.0.1:8000 --model smollm2 \\
      --concurrency 8 --input-tokens 512 --output-tokens 128 --max-requests 200 --out a.json

  # Poisson arrivals at 4 req/s for 60 s, goodput under TTFT <= 500 ms and TPOT <= 50 ms
  stator-bench run --url http://127.0.0.1:8000 --model m --rate 4 --duration 60 \\
      --slo-ttft 500 --slo-itl 50 --out rate4.json --plots plots/

  # a sweep of rates, 100 requests each; reports the highest rate meeting 90% of SLOs
  stator-bench run --url http://127.0.0.1:8000 --model m --sweep 1,2,4,8 --max-requests 100 \\
      --slo-ttft 500 --slo-itl 50

  # replay an Azure trace 4x faster, first 500 requests, exact prompt lengths
  stator-bench run --url http://127.0.0.1:8000 --model m --trace ../shared/traces/azure2023_conv.csv \\
      --time-scale 0.25 --max-requests 500 --tokenizer models/tokenizer.json

  # 16 groups sharing a 1024-token prefix (prefix-aware routing)
  stator-bench run --url http://127.0.0.1:8000 --model m --concurrency 16 --max-requests 320 \\
      --prefix-groups 16 --prefix-tokens 1024 --input-tokens 1200

  # side by side, with B/A ratios
  stator-bench compare a.json b.json

Clocks: monotonic. TTFT is the first chunk carrying generated text; ITL is the gap between such
chunks (per chunk when a server packs several tokens in one); TPOT = (e2e - TTFT) / (tokens - 1)
with the server's usage.completion_tokens when it reports it. Exit codes: 0 ok, 1 bad usage or
setup, 3 when --fail-on-error is given and any request failed.";

#[derive(Debug, Parser)]
#[command(
    name = "stator-bench",
    version,
    about = "Load generator and benchmark for OpenAI-compatible LLM servers (stator, vLLM, llama.cpp, ...)",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load a server and report TTFT, ITL, TPOT, latency, throughput and goodput.
    #[command(after_help = EXAMPLES)]
    Run(Box<RunArgs>),
    /// Print two JSON reports side by side with B/A ratios.
    Compare(CompareArgs),
}

#[derive(Debug, Clone, Args, Serialize)]
#[command(group(ArgGroup::new("load").required(true).args(["concurrency", "rate", "sweep", "trace"])))]
pub struct RunArgs {
    /// Server base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted).
    #[arg(long)]
    pub url: String,
    /// Model name sent in every request.
    #[arg(long)]
    pub model: String,
    /// Which API to load.
    #[arg(long, value_enum, default_value = "chat")]
    pub endpoint: Endpoint,
    /// Bearer token, if the server wants one.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub api_key: Option<String>,

    /// Closed loop: this many requests always in flight.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Load shape (pick one)")]
    pub concurrency: Option<u32>,
    /// Open loop at this many requests per second (see --arrival).
    #[arg(long, value_parser = positive_f64, help_heading = "Load shape (pick one)")]
    pub rate: Option<f64>,
    /// Open loop at each of these rates in turn, e.g. 1,2,4,8; bounds apply to each step.
    #[arg(long, value_delimiter = ',', value_parser = positive_f64, help_heading = "Load shape (pick one)")]
    pub sweep: Option<Vec<f64>>,
    /// Replay a CSV trace (TIMESTAMP,ContextTokens,GeneratedTokens): arrival times and lengths.
    #[arg(long, help_heading = "Load shape (pick one)")]
    pub trace: Option<PathBuf>,
    /// Gaps between arrivals for --rate and --sweep.
    #[arg(
        long,
        value_enum,
        default_value = "poisson",
        help_heading = "Load shape (pick one)"
    )]
    pub arrival: ArrivalArg,
    /// Multiplies trace timestamps: 0.5 replays twice as fast, 2 twice as slow.
    #[arg(long, default_value_t = 1.0, value_parser = positive_f64, help_heading = "Load shape (pick one)")]
    pub time_scale: f64,

    /// Prompt length in tokens (ignored with --trace).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Workload")]
    pub input_tokens: u32,
    /// Tokens to generate per request; forced with max_tokens, min_tokens and ignore_eos.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Workload")]
    pub output_tokens: u32,
    /// Caps prompt lengths (useful to fit trace prompts into a small model's context).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Workload")]
    pub max_input_tokens: Option<u32>,
    /// Number of prompt groups that share a prefix (round robin over requests).
    #[arg(long, requires = "prefix_tokens", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Workload")]
    pub prefix_groups: Option<u32>,
    /// Length of each group's shared prefix in tokens.
    #[arg(long, requires = "prefix_groups", help_heading = "Workload")]
    pub prefix_tokens: Option<u32>,
    /// The model's tokenizer.json: prompts then encode to exactly the requested length.
    /// Without it, prompts are common English words, one word per token in Llama-family BPE.
    #[arg(long, help_heading = "Workload")]
    pub tokenizer: Option<PathBuf>,
    /// Seed for prompts and Poisson arrivals.
    #[arg(long, default_value_t = 0, help_heading = "Workload")]
    pub seed: u64,

    /// Stop sending after this many requests (per sweep step).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Bounds")]
    pub max_requests: Option<u64>,
    /// Stop sending after this many seconds (per sweep step); in-flight requests finish.
    #[arg(long, value_parser = positive_f64, help_heading = "Bounds")]
    pub duration: Option<f64>,
    /// Deadline for one request, from send to the end of its stream, in seconds.
    #[arg(long, default_value_t = 600.0, value_parser = positive_f64, help_heading = "Bounds")]
    pub request_timeout: f64,

    /// TTFT objective in milliseconds, for goodput.
    #[arg(long, value_parser = positive_f64, help_heading = "Goodput")]
    pub slo_ttft: Option<f64>,
    /// Inter-token objective in milliseconds, checked against each request's TPOT.
    #[arg(long, value_parser = positive_f64, help_heading = "Goodput")]
    pub slo_itl: Option<f64>,
    /// Share of requests that must meet the SLOs for a sweep step to count as sustained.
    #[arg(long, default_value_t = 0.9, value_parser = fraction, help_heading = "Goodput")]
    pub slo_attainment: f64,

    /// Write the JSON report here.
    #[arg(long, help_heading = "Output")]
    pub out: Option<PathBuf>,
    /// Write PNG plots (latency CDFs, throughput and TTFT over time) into this folder.
    #[arg(long, help_heading = "Output")]
    pub plots: Option<PathBuf>,
    /// A TrueType font for plot labels (default: a system DejaVu/Liberation/Noto font).
    #[arg(long, help_heading = "Output")]
    pub plot_font: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, help_heading = "Output")]
    pub no_progress: bool,
    /// Exit with code 3 if any request failed.
    #[arg(long, help_heading = "Output")]
    pub fail_on_error: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ArrivalArg {
    Constant,
    Poisson,
}

impl From<ArrivalArg> for Arrival {
    fn from(arg: ArrivalArg) -> Arrival {
        match arg {
            ArrivalArg::Constant => Arrival::Constant,
            ArrivalArg::Poisson => Arrival::Poisson,
        }
    }
}

impl RunArgs {
    /// Checks that need several flags at once; clap has checked each flag alone.
    pub fn validate(&self) -> Result<(), String> {
        let bounded =
            self.max_requests.is_some() || self.duration.is_some() || self.trace.is_some();
        if !bounded {
            return Err("give --max-requests or --duration (or both) so the run ends".into());
        }
        if let (Some(groups), Some(_)) = (self.prefix_groups, &self.trace) {
            return Err(format!(
                "--prefix-groups {groups} applies to synthetic prompts, not --trace"
            ));
        }
        if let Some(prefix) = self.prefix_tokens {
            if prefix > self.input_tokens {
                return Err(format!(
                    "--prefix-tokens {prefix} is longer than --input-tokens {}",
                    self.input_tokens
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The baseline report.
    pub a: PathBuf,
    /// The report compared with it (ratios are B/A).
    pub b: PathBuf,
}

fn positive_f64(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

fn fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("stator-bench").chain(args.split_whitespace()))
    }

    fn run_args(args: &str) -> RunArgs {
        match parse(args).unwrap().command {
            Command::Run(run) => *run,
            Command::Compare(_) => panic!("expected run"),
        }
    }

    #[test]
    fn one_load_shape_is_required_and_only_one() {
        assert!(parse("run --url http://x --model m --max-requests 1").is_err());
        assert!(parse("run --url http://x --model m --rate 1 --concurrency 2").is_err());
        let args = run_args("run --url http://x --model m --sweep 1,2.5,4 --max-requests 3");
        assert_eq!(args.sweep, Some(vec![1.0, 2.5, 4.0]));
        assert_eq!(args.arrival, ArrivalArg::Poisson);
        assert_eq!(args.endpoint, Endpoint::Chat);
    }

    #[test]
    fn bad_numbers_are_refused_at_parse_time() {
        assert!(parse("run --url u --model m --rate 0 --max-requests 1").is_err());
        assert!(parse("run --url u --model m --rate -2 --max-requests 1").is_err());
        assert!(parse("run --url u --model m --concurrency 0 --max-requests 1").is_err());
        assert!(
            parse("run --url u --model m --rate 1 --slo-attainment 1.5 --max-requests 1").is_err()
        );
        assert!(
            parse("run --url u --model m --rate 1 --prefix-groups 2 --max-requests 1").is_err()
        );
    }

    #[test]
    fn unbounded_or_inconsistent_runs_are_refused() {
        assert!(run_args("run --url u --model m --rate 1")
            .validate()
            .unwrap_err()
            .contains("--max-requests"));
        assert!(run_args("run --url u --model m --trace t.csv")
            .validate()
            .is_ok());
        let err = run_args(
            "run --url u --model m --rate 1 --duration 5 --prefix-groups 2 --prefix-tokens 300",
        )
        .validate()
        .unwrap_err();
        assert!(err.contains("--prefix-tokens 300"), "{err}");
    }
}
