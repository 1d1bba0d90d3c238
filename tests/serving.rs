//! A real `stator peer` serving the default model, driven by real clients: the official
//! `openai` Python package (tests/python) and `stator-bench`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use stator_tests::*;

/// A one-peer cluster serving SmolLM2. Panics (fails the test) when the model is missing: CI
/// installs it with tools/fetch-model.sh, and a silently skipped test proves nothing.
fn serving_peer(root: &std::path::Path) -> Peer {
    let model = default_model();
    let mut p = Peer::new(root, "serve");
    p.extra_args = vec![
        "--model".into(),
        model.display().to_string(),
        "--kv-cache-mib".into(),
        "256".into(),
        "--max-queue".into(),
        "64".into(),
    ];
    p.start().unwrap();
    p.wait_healthy(Duration::from_secs(60)).unwrap();
    let up = wait_for(Duration::from_secs(60), || {
        match http_get(&format!("{}/v1/models", p.url()), None) {
            Ok((200, body)) if body.contains("SmolLM2") => Some(()),
            _ => None,
        }
    });
    assert!(up.is_some(), "model never served:\n{}", p.log());
    p
}

#[test]
fn the_official_openai_client_is_served_correctly() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let peer = serving_peer(root.path());
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/python",
        ])
        .current_dir(&repo)
        .env("STATOR_URL", peer.url())
        .env("STATOR_MODEL", "SmolLM2-135M-Instruct")
        .output()
        .expect("python3 is needed for the OpenAI client tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "pytest failed:\n{text}\n--- peer log ---\n{}",
        peer.log()
    );
    assert!(text.contains("passed"), "pytest ran no test:\n{text}");
}

#[test]
fn stator_bench_drives_a_real_peer_without_errors() {
    let _s = serial();
    let root = tempfile::tempdir().unwrap();
    let peer = serving_peer(root.path());
    let bench = stator_bin().with_file_name("stator-bench");
    assert!(bench.exists(), "{} not built", bench.display());
    let report = root.path().join("bench.json");
    let out = Command::new(&bench)
        .args([
            "run",
            "--url",
            &peer.url(),
            "--model",
            "SmolLM2-135M-Instruct",
            "--concurrency",
            "4",
        ])
        .args([
            "--max-requests",
            "12",
            "--input-tokens",
            "64",
            "--output-tokens",
            "16",
            "--fail-on-error",
            "--no-progress",
        ])
        .arg("--out")
        .arg(&report)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "stator-bench failed:\n{text}\n--- peer log ---\n{}",
        peer.log()
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let summary = &json["runs"][0]["summary"];
    assert_eq!(summary["requests"].as_u64(), Some(12), "report: {summary}");
    assert_eq!(summary["succeeded"].as_u64(), Some(12), "report: {summary}");
    assert!(
        summary["output_token_throughput"].as_f64().unwrap_or(0.0) > 0.0,
        "report: {summary}"
    );
    assert_eq!(
        summary["output_tokens"].as_u64(),
        Some(12 * 16),
        "ignore_eos + max_tokens force the length"
    );
}
