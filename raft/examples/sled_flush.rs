//! How long one log append + flush takes in the sled that stator links (`vendor/sled`), on an
//! idle machine: the floor under every Raft round (the leader and each follower flush every
//! entry before acknowledging it).
//!
//! `cargo run --release -p stator-raft --example sled_flush -- [DIR] [ENTRIES]`
//! DIR (default: a temp dir under the current directory, so that it is on the same disk as a
//! data dir would be) is created and removed; prints a table and writes
//! `bench/results/sled-flush.json`.
//!
//! A/B against the crates.io sled: comment out the `[patch.crates-io]` line of the workspace
//! `Cargo.toml`, build this example with another `CARGO_TARGET_DIR`, restore the line, and run
//! the two binaries alternately (`bench/results/sled-flush-ab/`).

use std::time::Instant;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => tempfile::tempdir_in(".")?.keep(),
    };
    let entries: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(3000);
    anyhow::ensure!(entries >= 100, "ENTRIES must be at least 100");
    let db = sled::Config::new().path(&dir).open()?;
    let log = db.open_tree("raft_log")?;
    // About the size of one encoded entry of a few batched commands.
    let entry = vec![7u8; 300];
    let mut insert_us = Vec::with_capacity(entries);
    let mut flush_us = Vec::with_capacity(entries);
    for index in 0..entries as u64 {
        let started = Instant::now();
        log.insert(index.to_be_bytes(), entry.as_slice())?;
        let inserted = Instant::now();
        log.flush()?;
        insert_us.push((inserted - started).as_secs_f64() * 1e6);
        flush_us.push(inserted.elapsed().as_secs_f64() * 1e6);
    }
    drop(log);
    drop(db);
    std::fs::remove_dir_all(&dir)?;
    insert_us.sort_by(f64::total_cmp);
    flush_us.sort_by(f64::total_cmp);
    println!("{entries} entries of {} bytes, one flush each", entry.len());
    println!("step     p50 us   p90 us   p99 us");
    let mut rows = Vec::new();
    for (step, v) in [("insert", &insert_us), ("flush", &flush_us)] {
        let (p50, p90, p99) = (percentile(v, 0.5), percentile(v, 0.9), percentile(v, 0.99));
        println!("{step:<8} {p50:>6.1}   {p90:>6.1}   {p99:>6.1}");
        rows.push(serde_json::json!({ "step": step, "p50_us": p50, "p90_us": p90, "p99_us": p99 }));
    }
    let out = std::path::Path::new("bench/results/sled-flush.json");
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(
        out,
        serde_json::to_string_pretty(
            &serde_json::json!({ "entries": entries, "entry_bytes": entry.len(), "steps": rows }),
        )?,
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
