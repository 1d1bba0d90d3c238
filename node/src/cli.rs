//! Command-line interface: `stator peer` runs a cluster member, `stator ctl` operates one.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use stator_gpu::backend::cuda::CudaDtype;
use stator_raft::model::{WorkerId, WorkerRole};

#[derive(Parser, Debug)]
#[command(
    name = "stator",
    version,
    about = "Serve large language models from a cluster of identical peers.",
    long_about = "Serve large language models from a cluster of identical peers.\n\n\
        Every machine runs `stator peer`. The first one bootstraps a cluster and prints a join \
        token; the others start with --join and --token. Any peer serves the OpenAI API on its \
        --http port and Prometheus metrics at /metrics. Operate the cluster with `stator ctl`.",
    after_help = "Examples:\n  \
        stator peer --data-dir /var/lib/stator --listen 10.0.0.1:7400 --http 0.0.0.0:8000\n  \
        stator peer --data-dir /var/lib/stator --listen 10.0.0.2:7400 --http 0.0.0.0:8000 \\\n      \
        --join 10.0.0.1:7400 --token stator1-...\n  \
        stator ctl --peer http://10.0.0.1:8000 --data-dir /var/lib/stator members",
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a cluster member (bootstraps a new cluster when the data dir is empty and no --join).
    Peer(Box<PeerArgs>),
    /// Operate a running cluster through any peer's HTTP admin API.
    Ctl(CtlArgs),
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Every option can also come from a TOML file given with --config, with \
    the option's long name as key (data-dir = \"/var/lib/stator\", label = [\"zone=a\"]). \
    Options on the command line win over the file."
)]
pub struct PeerArgs {
    /// TOML file with peer options (keys are the long option names).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where this peer keeps its identity, certificates, Raft log and state.
    #[arg(long, value_name = "DIR", env = "STATOR_DATA_DIR")]
    pub data_dir: PathBuf,

    /// QUIC address for cluster traffic (UDP).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,

    /// HTTP address for the OpenAI API, /metrics, /health and the admin API.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8000")]
    pub http: SocketAddr,

    /// QUIC address other peers use to reach this one (defaults to --listen; required when
    /// --listen is a wildcard address such as 0.0.0.0).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<SocketAddr>,

    /// HTTP address other peers and operators use to reach this one (defaults to --http, with
    /// the --advertise host when --http is a wildcard address).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_http: Option<SocketAddr>,

    /// QUIC address of any cluster member to join through (ignored when the data dir already
    /// belongs to a cluster: the peer rejoins by itself).
    #[arg(long, value_name = "HOST:PORT")]
    pub join: Option<SocketAddr>,

    /// Join token printed at bootstrap or by `stator ctl join-token`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "STATOR_JOIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// How long to keep retrying an unreachable --join address before giving up.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub join_timeout_s: u64,

    /// Number of Raft voters the cluster keeps (odd); further peers are learners.
    #[arg(long, default_value_t = 3, value_parser = parse_voters)]
    pub voters: usize,

    /// Heartbeat interval from every peer to the leader.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub heartbeat_ms: u64,

    /// A peer silent this long is marked Down by the leader.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    pub down_after_ms: u64,

    /// A voter Down this long is replaced by a healthy learner.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub replace_voter_after_s: u64,

    /// Build a Raft snapshot after this many log entries. The snapshot is the durable image of
    /// the replicated state: a restart loads the newest one and re-applies the log after it,
    /// and the log is purged up to 1,000 entries below it.
    #[arg(long, value_name = "ENTRIES", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub raft_snapshot_every: u64,

    /// Node labels, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Serve the OpenAI API from this peer's own engine only, without request leases. By
    /// default the API is served from the cluster's workers under request leases: requests move
    /// to another worker, token-exact, when theirs dies or changes role.
    #[arg(long, conflicts_with = "request_leases")]
    pub local_engine_only: bool,

    /// Accepted for compatibility: request leases are the default (see --local-engine-only).
    #[arg(long, hide = true)]
    pub request_leases: bool,

    /// Role of this peer: aggregated, prefill or decode (its worker's initial role; the
    /// cluster's record wins after the first start, see `stator ctl set-role`), or frontend
    /// (no worker and no weights: it serves the API through the cluster's workers and loads
    /// only the tokenizer and chat template from --model).
    #[arg(long, default_value = "aggregated", value_parser = parse_peer_role)]
    pub role: PeerRole,

    /// During a role change, how long this worker lets its requests finish before it moves
    /// the rest to other workers (they continue there, token-exact).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub drain_timeout_s: u64,

    /// Longest a decode worker waits for a prompt's KV from a prefill worker (the remote
    /// prefill included) before it gives up and prefills the prompt itself.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub kv_transfer_timeout_ms: u64,

    /// Times a request may move to another worker before it fails.
    #[arg(long, default_value_t = 3)]
    pub migration_limit: u32,

    /// A worker without proven quorum contact for this long holds its token streams
    /// (self-fencing); defaults to half of --down-after-ms, so that a peer frozen long enough
    /// to lose its leases is fenced before they move.
    #[arg(long, value_name = "MS")]
    pub lease_timeout_ms: Option<u64>,

    /// Prompts whose part not cached on the decode worker is shorter than this many tokens are
    /// prefilled on the decode worker itself instead of on a prefill worker.
    #[arg(long, value_name = "TOKENS", default_value_t = 512)]
    pub disagg_min_tokens: usize,

    /// Router weight of a worker's uncached prompt blocks against its active blocks
    /// (cost = w * uncached_blocks + active_blocks).
    #[arg(long, value_name = "W", default_value_t = 1.0)]
    pub router_overlap_weight: f64,

    /// 0 routes to the lowest cost; above 0 samples workers with softmax(-cost / T).
    #[arg(long, value_name = "T", default_value_t = 0.0)]
    pub router_temperature: f64,

    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Model to serve: a .gguf file or a Hugging Face model directory (config.json,
    /// *.safetensors, tokenizer.json). Defaults to SmolLM2-135M-Instruct as installed by
    /// tools/fetch-model.sh, when present.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Serve a model of this configuration with seeded random weights (a preset such as
    /// llama-3.2-1b, llama-3.1-8b, smollm2-135m, or a config.json path), for benchmarks.
    /// Needs --model too for the tokenizer, or uses the default model's tokenizer.
    #[arg(long, value_name = "CONFIG")]
    pub random_weights: Option<String>,

    /// Where the engine runs: `auto` (the first CUDA GPU when one is usable, else the CPU),
    /// `cpu`, or `cuda:N`.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: Device,

    /// Fraction of the GPU's memory the engine may use (weights, activations, KV cache).
    #[arg(long, default_value_t = 0.90)]
    pub gpu_memory_utilization: f32,

    /// 16-bit type of weights, activations and KV cache on a GPU: `bf16` (f32's range) or
    /// `f16` (3 more mantissa bits: logits ~8x closer to f32, but values beyond ±65504
    /// overflow). The CPU backend always computes in f32.
    #[arg(long, default_value = "bf16", value_parser = parse_dtype)]
    pub dtype: CudaDtype,

    /// Run without a model (cluster member only; the OpenAI API answers 503).
    #[arg(long, conflicts_with_all = ["model", "random_weights"])]
    pub no_model: bool,

    /// Name the model is served under (defaults to the file or directory name).
    #[arg(long)]
    pub served_model_name: Option<String>,

    /// Maximum sequences decoded together.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,

    /// Token budget of one engine step (chunked prefill).
    #[arg(long, default_value_t = 512)]
    pub max_batch_tokens: usize,

    /// Requests waiting beyond this are refused with 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,

    /// Memory for the KV cache.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub kv_cache_mib: usize,

    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
}

#[derive(Args, Debug)]
#[command(
    after_help = "The admin token is read from --token, $STATOR_ADMIN_TOKEN, or \
    DATA_DIR/admin.token when --data-dir is given.\n\nExamples:\n  \
    stator ctl --peer http://127.0.0.1:8000 --data-dir ./d1 members\n  \
    stator ctl --peer http://127.0.0.1:8000 --token $T --json status"
)]
pub struct CtlArgs {
    /// HTTP address of any peer.
    #[arg(
        long,
        value_name = "URL",
        env = "STATOR_PEER",
        default_value = "http://127.0.0.1:8000"
    )]
    pub peer: String,

    /// Admin token.
    #[arg(long, env = "STATOR_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Read the admin token from this peer data dir.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Machine-readable JSON output.
    #[arg(long)]
    pub json: bool,

    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout_s: u64,

    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// List cluster members: id, addresses, Raft role, status, heartbeat age.
    Members,
    /// This peer's view: node id, leader, term, commit and applied index, health.
    Status,
    /// Print the join token for new peers.
    JoinToken,
    /// Remove a member from the cluster (by node id).
    Remove {
        /// Node id as listed by `members`.
        node: u64,
    },
    /// Ask the peer at --peer to leave the cluster and shut down.
    Leave,
    /// Operator key/value space, replicated through Raft.
    #[command(subcommand)]
    Meta(MetaCommand),
    /// List workers: id, node address, role, state, pending role, model, device, KV blocks,
    /// leases held.
    Roles,
    /// List request leases: request, owner worker, epoch, frontend node, age.
    Requests,
    /// Switch a worker to another role. It drains first: it takes no new requests, lets its
    /// requests finish (up to its --drain-timeout-s, then moves them to other workers), then
    /// switches. Returns once the change is committed; `roles` shows its progress.
    SetRole {
        /// NODE/SLOT as listed by `roles`, or a node id (slot 0).
        #[arg(value_parser = parse_worker_id)]
        worker: WorkerId,
        /// prefill, decode or aggregated.
        #[arg(value_parser = parse_role)]
        role: WorkerRole,
    },
}

#[derive(Subcommand, Debug)]
pub enum MetaCommand {
    /// Read a key (linearizable).
    Get { key: String },
    /// Write a key; returns once committed.
    Put { key: String, value: String },
    /// Delete a key.
    Delete { key: String },
    /// List all keys and values.
    List,
}

/// The engine's device.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    Cuda(usize),
}

fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "auto" => Ok(Device::Auto),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("device '{s}' must be auto, cpu, cuda or cuda:N")),
    }
}

fn parse_dtype(s: &str) -> Result<CudaDtype, String> {
    match s {
        "bf16" => Ok(CudaDtype::Bf16),
        "f16" => Ok(CudaDtype::F16),
        _ => Err(format!("dtype '{s}' must be bf16 or f16")),
    }
}

fn parse_voters(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if n == 0 || n.is_multiple_of(2) {
        return Err(format!(
            "voters must be odd and at least 1 (got {n}): an even count \
                            tolerates no more failures than the odd count below it"
        ));
    }
    Ok(n)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("label '{s}' must look like KEY=VALUE")),
    }
}

/// Turns a TOML config file into `--key value` arguments placed before the command line's own,
/// so clap validates both the same way and the command line wins (args_override_self).
pub fn config_file_args(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let mut args = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        let mut push = |v: &toml::Value| -> anyhow::Result<()> {
            match v {
                toml::Value::String(s) => {
                    args.push(flag.clone());
                    args.push(s.clone());
                }
                toml::Value::Integer(i) => {
                    args.push(flag.clone());
                    args.push(i.to_string());
                }
                toml::Value::Float(f) => {
                    args.push(flag.clone());
                    args.push(f.to_string());
                }
                toml::Value::Boolean(true) => args.push(flag.clone()),
                toml::Value::Boolean(false) => {}
                other => anyhow::bail!(
                    "config file {}: key '{key}' has an unsupported value {other}",
                    path.display()
                ),
            }
            Ok(())
        };
        match &value {
            toml::Value::Array(items) => {
                for item in items {
                    push(item)?;
                }
            }
            v => push(v)?,
        }
    }
    Ok(args)
}

/// What a peer runs: a worker of some role, or only the API (`frontend`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PeerRole {
    Worker(WorkerRole),
    Frontend,
}

fn parse_peer_role(s: &str) -> Result<PeerRole, String> {
    if s.eq_ignore_ascii_case("frontend") {
        return Ok(PeerRole::Frontend);
    }
    parse_role(s)
        .map(PeerRole::Worker)
        .map_err(|_| format!("unknown role {s:?}: use aggregated, prefill, decode or frontend"))
}

/// `NODE/SLOT`, or `NODE` for slot 0.
pub fn parse_worker_id(s: &str) -> Result<WorkerId, String> {
    let (node, slot) = s.split_once('/').unwrap_or((s, "0"));
    let bad = || format!("worker {s:?} must be NODE/SLOT (e.g. 1234/0) or a node id");
    Ok(WorkerId {
        node: node.trim().parse().map_err(|_| bad())?,
        slot: slot.trim().parse().map_err(|_| bad())?,
    })
}

/// The lowercase name used on the command line and in the admin API.
pub fn role_name(role: WorkerRole) -> &'static str {
    match role {
        WorkerRole::Aggregated => "aggregated",
        WorkerRole::Prefill => "prefill",
        WorkerRole::Decode => "decode",
    }
}

pub fn parse_role(s: &str) -> Result<WorkerRole, String> {
    match s.to_ascii_lowercase().as_str() {
        "aggregated" => Ok(WorkerRole::Aggregated),
        "prefill" => Ok(WorkerRole::Prefill),
        "decode" => Ok(WorkerRole::Decode),
        _ => Err(format!(
            "unknown role {s:?}: use aggregated, prefill or decode"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_parse_and_bad_ones_are_explained() {
        assert_eq!(parse_dtype("bf16"), Ok(CudaDtype::Bf16));
        assert_eq!(parse_dtype("f16"), Ok(CudaDtype::F16));
        assert!(parse_dtype("fp8").unwrap_err().contains("bf16 or f16"));
    }

    #[test]
    fn devices_parse_and_bad_ones_are_explained() {
        assert_eq!(parse_device("cuda:1"), Ok(Device::Cuda(1)));
        assert_eq!(parse_device("cuda"), Ok(Device::Cuda(0)));
        assert_eq!(parse_device("cpu"), Ok(Device::Cpu));
        assert!(parse_device("gpu0").unwrap_err().contains("cuda:N"));
    }

    #[test]
    fn roles_and_worker_ids_parse_and_bad_ones_are_explained() {
        assert_eq!(parse_peer_role("frontend"), Ok(PeerRole::Frontend));
        assert_eq!(
            parse_peer_role("Decode"),
            Ok(PeerRole::Worker(WorkerRole::Decode))
        );
        assert!(parse_peer_role("gpu").unwrap_err().contains("frontend"));
        assert!(
            parse_role("frontend").is_err(),
            "a worker cannot become a frontend"
        );
        assert_eq!(parse_worker_id("12/3"), Ok(WorkerId { node: 12, slot: 3 }));
        assert_eq!(parse_worker_id("12"), Ok(WorkerId { node: 12, slot: 0 }));
        assert!(parse_worker_id("12/x").unwrap_err().contains("NODE/SLOT"));
        assert!(parse_worker_id("").is_err());
    }

    #[test]
    fn even_voter_counts_are_refused() {
        assert!(parse_voters("4").is_err());
        assert!(parse_voters("0").is_err());
        assert_eq!(parse_voters("5"), Ok(5));
    }

    #[test]
    fn config_file_becomes_arguments_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.toml");
        std::fs::write(
            &path,
            "data-dir = \"/tmp/x\"\nvoters = 5\nlabel = [\"zone=a\", \"rack=3\"]\nno-model = true\n",
        )
        .unwrap();
        let mut argv = vec!["stator".to_string(), "peer".to_string()];
        argv.extend(config_file_args(&path).unwrap());
        argv.extend(["--voters".to_string(), "3".to_string()]);
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Peer(p) = cli.command else {
            panic!("not peer")
        };
        assert_eq!(p.voters, 3);
        assert_eq!(p.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(p.labels.len(), 2);
        assert!(p.engine.no_model);
    }

    #[test]
    fn malformed_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.toml");
        std::fs::write(&path, "voters = [[[").unwrap();
        let err = config_file_args(&path).unwrap_err().to_string();
        assert!(err.contains("not valid TOML"), "{err}");
    }
}
