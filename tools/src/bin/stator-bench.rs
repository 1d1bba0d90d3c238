//! `stator-bench`: see `stator-bench --help`.

use std::process::ExitCode;

use clap::Parser;
use stator_tools::bench::run_bench;
use stator_tools::cli::{Cli, Command, CompareArgs, RunArgs};
use stator_tools::plot::write_plots;
use stator_tools::report::{render_comparison, render_table, Report};

/// Exit code when `--fail-on-error` is given and a request failed.
const REQUESTS_FAILED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Compare(args) => compare(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("stator-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let command_line: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run_bench(args, command_line))?;
    print!("{}", render_table(&report));
    if let Some(path) = &args.out {
        report.save(path)?;
        println!("report: {}", path.display());
    }
    if let Some(folder) = &args.plots {
        for file in write_plots(&report, folder, args.plot_font.as_deref())? {
            println!("plot: {}", file.display());
        }
    }
    let failed = report.failed_requests();
    if args.fail_on_error && failed > 0 {
        eprintln!("stator-bench: {failed} request(s) failed");
        return Ok(ExitCode::from(REQUESTS_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

fn compare(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    let a = Report::load(&args.a)?;
    let b = Report::load(&args.b)?;
    print!("{}", render_comparison(&a, &b));
    Ok(ExitCode::SUCCESS)
}
