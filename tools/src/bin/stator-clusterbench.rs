//! Cluster-core benchmark: replicated writes, leader failover and failure detection of a
//! 3-peer stator cluster, compared with a 3-member etcd cluster on the same machine.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;

#[path = "../clusterbench/mod.rs"]
mod clusterbench;

use clusterbench::run::{run, Settings};
use clusterbench::trials::TrialSettings;

#[derive(Parser, Debug)]
#[command(
    about = "Write throughput/latency, failover and failure detection: stator vs etcd, 3 members each"
)]
struct Args {
    /// The `stator` binary (build it with --release).
    #[arg(long, default_value = "target/release/stator")]
    stator_bin: PathBuf,
    /// The `etcd` binary (Debian's etcd-server).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Measure stator only.
    #[arg(long)]
    skip_etcd: bool,
    /// Members of each cluster (odd). `--members 1 --trials 0` measures one machine's write
    /// path with no replication: the floor that replication adds its round trips to.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Concurrent writers, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    writers: Vec<usize>,
    /// Distinct keys the writers cycle through (the replicated state holds this many).
    #[arg(long, default_value_t = clusterbench::load::DEFAULT_KEY_SPACE)]
    key_space: u64,
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    #[arg(long, default_value_t = 1.0)]
    window_s: f64,
    /// Throughput windows per concurrency (the trials of the throughput figure).
    #[arg(long, default_value_t = 30)]
    windows: usize,
    #[arg(long, default_value_t = 5000)]
    write_timeout_ms: u64,
    /// Failover and detection trials per system.
    #[arg(long, default_value_t = 30)]
    trials: usize,
    /// Per-attempt timeout of the writes after a leader kill.
    #[arg(long, default_value_t = 200)]
    attempt_timeout_ms: u64,
    #[arg(long, default_value_t = 2)]
    detection_poll_ms: u64,
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    #[arg(long)]
    plot_font: Option<PathBuf>,
    /// `STATOR_LOG` filter of the stator peers; e.g. `warn,openraft=info,stator_raft=debug`
    /// for a timeline probe (with --keep-dirs to read the logs afterwards).
    #[arg(long, default_value = "warn")]
    stator_log: String,
    /// Keep the members' data dirs and logs instead of deleting them.
    #[arg(long)]
    keep_dirs: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.writers.is_empty() || args.writers.contains(&0) {
        bail!("--writers needs positive counts");
    }
    if args.members % 2 == 0 || !(1..=7).contains(&args.members) {
        bail!("--members must be odd, from 1 to 7");
    }
    if args.members < 3 && args.trials > 0 {
        bail!("kill trials need at least 3 members (a majority must survive): pass --trials 0");
    }
    if !(1..=1_000_000).contains(&args.key_space) {
        bail!("--key-space must be between 1 and 1000000");
    }
    if args.windows == 0 || args.window_s <= 0.0 || args.warmup_s < 0.0 {
        bail!("--windows and --window-s must be positive, --warmup-s not negative");
    }
    if !args.stator_bin.is_file() {
        bail!(
            "{} not found: cargo build --release -p stator --bin stator",
            args.stator_bin.display()
        );
    }
    if !args.skip_etcd && !args.etcd_bin.is_file() {
        bail!(
            "{} not found: apt-get install -y etcd-server, or pass --skip-etcd",
            args.etcd_bin.display()
        );
    }
    let settings = Settings {
        stator_bin: args.stator_bin,
        etcd_bin: (!args.skip_etcd).then_some(args.etcd_bin),
        members: args.members,
        writers: args.writers,
        key_space: args.key_space,
        warmup_s: args.warmup_s,
        window_s: args.window_s,
        windows: args.windows,
        write_timeout: Duration::from_millis(args.write_timeout_ms),
        trials: args.trials,
        trial: TrialSettings {
            attempt_timeout: Duration::from_millis(args.attempt_timeout_ms),
            give_up_after: Duration::from_secs(10),
            settle_timeout: Duration::from_secs(30),
        },
        detection_poll: Duration::from_millis(args.detection_poll_ms),
        out: args.out,
        plot_font: args.plot_font,
        stator_log: args.stator_log,
        keep_dirs: args.keep_dirs,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let table = runtime.block_on(run(&settings))?;
    println!("{table}");
    Ok(())
}
