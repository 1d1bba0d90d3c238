//! Running one of the tools' binaries as a user would, and reading what it printed.

use std::process::Output;

pub async fn run(binary: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(binary)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"))
}

/// Standard output, then standard error.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
