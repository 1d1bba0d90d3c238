//! Request-lease benchmarks (issue 5): lease admissions/s and their commit latency on three
//! in-process Raft voters over QUIC, and SIGKILL of a worker peer → lease reassignment → the
//! client's next token on a 4-peer model cluster.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

// The cluster benchmark's process, plot and figure helpers, shared read-only.
#[allow(dead_code)]
#[path = "../clusterbench/mod.rs"]
mod clusterbench;
#[path = "../leasebench/mod.rs"]
mod leasebench;

use leasebench::failover::TrialSettings;
use leasebench::model_cluster::PeerSettings;
use leasebench::run::{admissions, failover, refigure, AdmissionSettings, FailoverSettings};

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "To bake bread you need",
    "The largest planet in the solar system is",
    "In computer science, a hash table is",
    "The best way to learn a language is",
    "Water boils at",
];

#[derive(Parser, Debug)]
#[command(about = "Request-lease benchmarks: admissions/s on 3 voters, kill -> reassignment")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
    #[arg(long, global = true, default_value = "bench/results")]
    out: PathBuf,
    #[arg(long, global = true)]
    plot_font: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Print the failover table of a lease-failover.json again (current classification).
    Refigure { file: PathBuf },
    /// GrantLease + ReleaseLease through RaftNode::write on 3 in-process voters over QUIC.
    Admissions {
        /// In-flight admissions, one measurement per value.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256,1024")]
        in_flight: Vec<usize>,
        #[arg(long, default_value_t = 1.0)]
        warmup_s: f64,
        #[arg(long, default_value_t = 1.0)]
        window_s: f64,
        /// Throughput windows per level (the trials of the admissions/s figure).
        #[arg(long, default_value_t = 30)]
        windows: usize,
        /// Parent of the sled data dirs: must be a real disk (not tmpfs).
        #[arg(long, default_value = "target/leasebench")]
        data_root: PathBuf,
    },
    /// SIGKILL a worker peer holding leases on a 4-peer model cluster, >= 30 trials.
    Failover {
        #[arg(long, default_value = "target/release/stator")]
        stator_bin: PathBuf,
        #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
        model: PathBuf,
        /// The name the peers serve the model under (the file name without extension and quant tag).
        #[arg(long, default_value = "SmolLM2-135M-Instruct")]
        model_name: String,
        #[arg(long, default_value_t = 30)]
        trials: usize,
        #[arg(long, default_value_t = 300)]
        down_after_ms: u64,
        #[arg(long, default_value_t = 128)]
        kv_cache_mib: usize,
        /// RAYON_NUM_THREADS of each peer's engine.
        #[arg(long, default_value_t = 1)]
        engine_threads: usize,
        /// Streams per trial (at most 8: one per built-in prompt).
        #[arg(long, default_value_t = 8)]
        streams: usize,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        #[arg(long, default_value_t = 6)]
        kill_after_chunks: usize,
        #[arg(long, default_value_t = 2)]
        poll_ms: u64,
        #[arg(long, default_value_t = 10)]
        give_up_after_s: u64,
        #[arg(long, default_value_t = 180)]
        start_timeout_s: u64,
        /// Extra arguments for every peer, e.g. --peer-args=--device,cpu
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        peer_args: Vec<String>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,openraft=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let table = match args.bench {
        Bench::Refigure { file } => refigure(&file)?,
        Bench::Admissions {
            in_flight,
            warmup_s,
            window_s,
            windows,
            data_root,
        } => {
            if in_flight.is_empty() || in_flight.contains(&0) || in_flight.iter().any(|&n| n > 4096)
            {
                bail!("--in-flight needs counts between 1 and 4096 (the writer queue depth)");
            }
            if windows == 0 || window_s <= 0.0 || warmup_s < 0.0 {
                bail!("--windows and --window-s must be positive, --warmup-s not negative");
            }
            let settings = AdmissionSettings {
                in_flight,
                warmup_s,
                window_s,
                windows,
                data_root,
                out: args.out,
                plot_font: args.plot_font,
            };
            runtime.block_on(admissions(&settings))?
        }
        Bench::Failover {
            stator_bin,
            model,
            model_name,
            trials,
            down_after_ms,
            kv_cache_mib,
            engine_threads,
            streams,
            max_tokens,
            kill_after_chunks,
            poll_ms,
            give_up_after_s,
            start_timeout_s,
            peer_args,
        } => {
            if !stator_bin.is_file() {
                bail!(
                    "{} not found: cargo build --release -p stator",
                    stator_bin.display()
                );
            }
            if !model.is_file() {
                bail!("{} not found: tools/fetch-model.sh", model.display());
            }
            if !(1..=PROMPTS.len()).contains(&streams) {
                bail!("--streams must be between 1 and {}", PROMPTS.len());
            }
            if trials == 0 || engine_threads == 0 || poll_ms == 0 || max_tokens == 0 {
                bail!("--trials, --engine-threads, --poll-ms and --max-tokens must be positive");
            }
            if kill_after_chunks >= max_tokens {
                bail!(
                    "--kill-after-chunks must be below --max-tokens, or nothing is left to migrate"
                );
            }
            let settings = FailoverSettings {
                peers: PeerSettings {
                    binary: stator_bin,
                    model,
                    down_after_ms,
                    kv_cache_mib,
                    engine_threads,
                    start_timeout: Duration::from_secs(start_timeout_s),
                    extra_args: peer_args,
                },
                trial: TrialSettings {
                    model: model_name,
                    prompts: PROMPTS[..streams].iter().map(|p| p.to_string()).collect(),
                    max_tokens,
                    kill_after_chunks,
                    poll_every: Duration::from_millis(poll_ms),
                    give_up_after: Duration::from_secs(give_up_after_s),
                    stream_timeout: Duration::from_secs(180),
                },
                trials,
                out: args.out,
                plot_font: args.plot_font,
            };
            runtime.block_on(failover(&settings))?
        }
    };
    println!("{table}");
    Ok(())
}
