//! `stator-clusterbench` end to end: refused settings, and a one-member run against a real
//! `stator` peer (`cargo build --bins` first, as tools/test.sh does).

mod binary;

use std::process::Output;

use binary::text;

const BIN: &str = env!("CARGO_BIN_EXE_stator-clusterbench");

async fn clusterbench(args: &[&str]) -> Output {
    binary::run(BIN, args).await
}

#[tokio::test]
async fn cluster_sizes_without_a_majority_or_kill_trials_without_survivors_are_refused() {
    let even = clusterbench(&["--members", "2", "--skip-etcd"]).await;
    assert!(!even.status.success());
    assert!(
        text(&even).contains("--members must be odd"),
        "{}",
        text(&even)
    );

    let lone_with_kills = clusterbench(&["--members", "1", "--trials", "3", "--skip-etcd"]).await;
    assert!(!lone_with_kills.status.success());
    assert!(
        text(&lone_with_kills).contains("pass --trials 0"),
        "{}",
        text(&lone_with_kills)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_run_measures_writes_without_replication_or_kill_trials() {
    let out = tempfile::tempdir().expect("temp dir");
    let stator = stator_tests::stator_bin();
    let run = clusterbench(&[
        "--stator-bin",
        stator.to_str().expect("utf-8 path"),
        "--skip-etcd",
        "--members",
        "1",
        "--trials",
        "0",
        "--writers",
        "2",
        "--key-space",
        "64",
        "--warmup-s",
        "0.2",
        "--windows",
        "2",
        "--keep-dirs",
        "--out",
        out.path().to_str().expect("utf-8 path"),
    ])
    .await;
    assert!(run.status.success(), "{}", text(&run));
    // One peer was started, not three: its data dir is the only one under the kept root.
    let log = text(&run);
    let root = log
        .lines()
        .find_map(|l| l.strip_prefix("[stator] starting 1 member under "))
        .unwrap_or_else(|| panic!("no start line in:\n{log}"))
        .trim()
        .to_owned();
    let root = std::path::Path::new(&root);
    let started: Vec<_> = std::fs::read_dir(root)
        .expect("kept root")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    std::fs::remove_dir_all(root).expect("remove kept root");
    assert_eq!(started, ["stator0"], "{log}");

    let writes: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("cluster-writes.json")).expect("writes JSON"),
    )
    .expect("valid JSON");
    assert_eq!(writes["environment"]["members"], 1);
    let figure = &writes["figures"][0];
    assert_eq!(figure["system"], "stator");
    assert_eq!(figure["writers"], 2);
    assert!(figure["acknowledged"].as_u64().unwrap_or(0) > 0, "{figure}");
    assert_eq!(figure["failed"], 0);

    let failover: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("cluster-failover.json")).expect("failover JSON"),
    )
    .expect("valid JSON");
    assert_eq!(failover["figures"], serde_json::json!([]));
    assert!(!out.path().join("cluster-failover-cdf.png").exists());
}
