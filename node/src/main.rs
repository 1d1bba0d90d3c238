//! The `stator` binary: `stator peer` runs a cluster member, `stator ctl` operates one.

use clap::Parser;
use stator::{cli, ctl, peer, telemetry};

/// A write allocates and frees many small buffers on several threads (HTTP, QUIC frames, Raft
/// entries); mimalloc made writes through a 3-peer cluster 5-20% faster than glibc's malloc in
/// an interleaved A/B (`bench/results/cluster-ab/mimalloc/`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let argv = match expand_config_file(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = cli::Cli::parse_from(argv);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            cli::Command::Peer(args) => {
                telemetry::init_logging();
                peer::run(*args).await
            }
            cli::Command::Ctl(args) => ctl::run(args).await,
        }
    });
    // Background tasks (sled flushers, QUIC drivers) must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `stator peer --config FILE ...`: splice the file's options in right after `peer`, so the
/// command line's own options, coming later, win.
fn expand_config_file(argv: Vec<String>) -> anyhow::Result<Vec<String>> {
    let Some(peer_at) = argv.iter().position(|a| a == "peer") else {
        return Ok(argv);
    };
    let mut path = None;
    for (i, a) in argv.iter().enumerate().skip(peer_at + 1) {
        if a == "--config" {
            path = argv.get(i + 1).cloned();
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.to_string());
        }
    }
    let Some(path) = path else { return Ok(argv) };
    let extra = cli::config_file_args(std::path::Path::new(&path))?;
    let mut out = argv[..=peer_at].to_vec();
    out.extend(extra);
    out.extend_from_slice(&argv[peer_at + 1..]);
    Ok(out)
}
