//! A real Prometheus server (Debian's `prometheus`) scrapes every peer's `/metrics`.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use stator_tests::*;

#[test]
fn a_real_prometheus_scrapes_every_peer() {
    let _s = serial();
    let prometheus = which("prometheus")
        .expect("Debian's `prometheus` package is needed (tools/test.sh installs it)");
    let c = Cluster::start(3, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<String> = c.peers.iter().map(|p| format!("'{}'", p.http)).collect();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: stator\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let port = free_tcp_port();
    let mut server = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let query = |q: &str| -> Option<Vec<Value>> {
        let url = format!("http://127.0.0.1:{port}/api/v1/query?query={q}");
        let (code, body) = http_get(&url, None).ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200)
            .then(|| v["data"]["result"].as_array().cloned())
            .flatten()
    };
    let up = wait_for(Duration::from_secs(30), || {
        let r = query("up")?;
        (r.len() == 3 && r.iter().all(|s| s["value"][1] == "1")).then_some(r)
    });
    let terms = wait_for(Duration::from_secs(10), || {
        query("stator_raft_term").filter(|r| r.len() == 3)
    });
    let members = query("sum(stator_cluster_members{status=\"up\"})");
    let _ = server.kill();
    let _ = server.wait();
    assert!(up.is_some(), "Prometheus never saw all three peers up");
    assert!(
        terms.is_some(),
        "stator_raft_term not scraped from every peer"
    );
    let members = members.expect("members query");
    assert_eq!(
        members[0]["value"][1], "3",
        "the leader reports three members up: {members:?}"
    );
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
}
