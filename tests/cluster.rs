//! Cluster core: real `stator peer` processes on loopback, killed for real.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};
use serde_json::Value;
use stator_tests::*;

const SETTLE: Duration = Duration::from_secs(20);

fn roles(members: &[Value]) -> (usize, usize) {
    let count = |r: &str| members.iter().filter(|m| m["raft_role"] == r).count();
    (count("voter"), count("learner"))
}

fn wait_members(peer: &Peer, n: usize, voters: usize, learners: usize) -> Vec<Value> {
    wait_for(SETTLE, || {
        let m = peer.members().ok()?;
        (m.len() == n && roles(&m) == (voters, learners)).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "{} never saw {n} members / {voters} voters / {learners} learners: {:?}",
            peer.name,
            peer.members()
        )
    })
}

#[test]
fn three_peers_agree_on_members_and_a_fourth_joins_as_learner() {
    let _s = serial();
    let mut c = Cluster::start(3, &[]).unwrap();
    let views: Vec<BTreeSet<u64>> = c
        .peers
        .iter()
        .map(|p| {
            wait_members(p, 3, 3, 0)
                .iter()
                .map(|m| m["id"].as_u64().unwrap())
                .collect()
        })
        .collect();
    assert!(
        views.windows(2).all(|w| w[0] == w[1]),
        "peers disagree: {views:?}"
    );
    for p in &c.peers {
        let ids: Vec<u64> = views[0].iter().copied().collect();
        assert!(ids.contains(&p.node_id().unwrap()));
    }

    c.add_peer(&[]).unwrap();
    for p in &c.peers {
        let m = wait_members(p, 4, 3, 1);
        assert!(m.iter().all(|m| m["status"] == "up"));
    }
    let newcomer = c.peers[3].node_id().unwrap();
    let m = c.peers[0].members().unwrap();
    let entry = m
        .iter()
        .find(|m| m["id"].as_u64() == Some(newcomer))
        .unwrap();
    assert_eq!(entry["raft_role"], "learner");
}

#[test]
fn killing_the_leader_elects_a_new_one_and_writes_continue() {
    let _s = serial();
    let mut c = Cluster::start(3, &[]).unwrap();
    wait_members(&c.peers[0], 3, 3, 0);
    c.peers[1].put("before", "1").unwrap();
    let old = c.leader().expect("a leader");
    let old_id = c.peers[old].node_id().unwrap();
    c.peers[old].kill9();

    let survivor = (0..3).find(|&i| i != old).unwrap();
    let new_leader = wait_for(Duration::from_secs(10), || {
        let s = c.peers[survivor].status().ok()?;
        s["leader_id"].as_u64().filter(|l| *l != old_id)
    })
    .expect("no new leader elected");
    assert_ne!(new_leader, old_id);
    let other = (0..3).find(|&i| i != old && i != survivor).unwrap();
    wait_for(Duration::from_secs(10), || {
        c.peers[other].put("after", "2").ok()
    })
    .expect("writes resume");
    assert_eq!(
        c.peers[survivor].get("before").unwrap().as_deref(),
        Some("1")
    );
    assert_eq!(
        c.peers[survivor].get("after").unwrap().as_deref(),
        Some("2")
    );
}

#[test]
fn a_killed_follower_is_marked_down_and_back_up_after_restart() {
    let _s = serial();
    let mut c = Cluster::start(3, &["--down-after-ms", "300"]).unwrap();
    wait_members(&c.peers[0], 3, 3, 0);
    let leader = c.leader().unwrap();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let victim_id = c.peers[victim].node_id().unwrap();
    let status_of = |p: &Peer| -> Option<String> {
        let m = p.members().ok()?;
        m.iter()
            .find(|m| m["id"].as_u64() == Some(victim_id))
            .map(|m| m["status"].as_str().unwrap_or("").to_string())
    };
    let killed = Instant::now();
    c.peers[victim].kill9();
    wait_for(Duration::from_secs(5), || {
        (status_of(&c.peers[leader])? == "down").then_some(())
    })
    .expect("follower never marked down");
    let detected = killed.elapsed();
    assert!(
        detected < Duration::from_secs(3),
        "detection took {detected:?}"
    );

    c.peers[victim].start().unwrap();
    c.peers[victim].wait_healthy(SETTLE).unwrap();
    wait_for(Duration::from_secs(5), || {
        (status_of(&c.peers[leader])? == "up").then_some(())
    })
    .expect("restarted follower never marked up");
}

#[test]
fn every_acknowledged_write_survives_kill9_of_all_peers() {
    let _s = serial();
    // Snapshots every 100 entries: the peers restart from a snapshot (the only durable image
    // of the state) with entries after it to re-apply from the log, and with a purged log.
    let mut c = Cluster::start(3, &["--raft-snapshot-every", "100"]).unwrap();
    wait_members(&c.peers[0], 3, 3, 0);
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let url_peer = c.peers[w % 3].url();
        let token = c.peers[0].admin_token().unwrap();
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{i}");
                let value = format!("v{i}");
                let body = serde_json::json!({ "value": value });
                if let Ok((200, _)) = http_request(
                    "PUT",
                    &format!("{url_peer}/admin/v1/meta/{key}"),
                    Some(&token),
                    Some(body),
                ) {
                    acked.lock().unwrap().push((key, value));
                }
                i += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    for p in c.peers.iter_mut() {
        p.kill9();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "too few writes acknowledged ({}) to prove anything",
        acked.len()
    );

    for p in c.peers.iter_mut() {
        p.start().unwrap();
    }
    for p in &c.peers {
        p.wait_healthy(SETTLE).unwrap();
    }
    for p in &c.peers {
        assert!(
            metric_sum(p, "stator_raft_snapshot_index", "") > 0.0,
            "a peer came back without a snapshot: the restart did not exercise one"
        );
    }
    let (code, all) = c.peers[2].admin("GET", "/admin/v1/meta", None).unwrap();
    assert_eq!(code, 200);
    let missing: Vec<_> = acked
        .iter()
        .filter(|(k, v)| all[k].as_str() != Some(v.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn wrong_or_malformed_tokens_are_refused_with_clear_errors() {
    let _s = serial();
    let c = Cluster::start(1, &[]).unwrap();
    let real = c.token.clone();
    // Same CA fingerprint, wrong secret.
    let (head, _secret) = real.rsplit_once('-').expect("token has a secret part");
    let wrong_secret = format!("{head}-{}", "0".repeat(64));
    let cases = [
        (wrong_secret, "refused"),
        (real.replacen(&real[8..16], "00000000", 1), "fingerprint"),
        ("not-a-token".to_string(), "not a valid join token"),
    ];
    for (i, (token, expect)) in cases.iter().enumerate() {
        let mut p = Peer::new(c.root.path(), &format!("bad{i}"));
        p.join = Some((c.peers[0].quic, token.clone()));
        p.extra_args
            .extend(["--join-timeout-s".to_string(), "3".to_string()]);
        p.start().unwrap();
        let code = p.wait_exit(Duration::from_secs(15)).unwrap();
        assert_ne!(code, Some(0));
        let log = p.log().to_lowercase();
        assert!(
            log.contains(expect),
            "token case {i}: expected '{expect}' in:\n{log}"
        );
    }
    assert_eq!(
        c.peers[0].members().unwrap().len(),
        1,
        "a refused peer must not become a member"
    );
}

#[test]
fn a_tls_client_without_a_cluster_certificate_is_refused() {
    let _s = serial();
    let c = Cluster::start(1, &[]).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(async {
        let foreign = stator_transport::ClusterCa::generate("intruder").unwrap();
        let identity = foreign.issue_identity(42).unwrap();
        let ep = stator_transport::Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            identity,
            Default::default(),
        )
        .unwrap();
        ep.call_timeout::<Probe>(c.peers[0].quic, &(), Duration::from_secs(3))
            .await
    });
    match result {
        Ok(_) => panic!("a non-member reached a member method"),
        Err(stator_transport::RpcError::Remote(m))
        | Err(stator_transport::RpcError::UnknownMethod(m)) => {
            panic!("the handshake must fail before any method is considered, got: {m}")
        }
        Err(_) => {}
    }
    c.peers[0].wait_healthy(Duration::from_secs(2)).unwrap();
}

struct Probe;
impl stator_transport::Method for Probe {
    const NAME: &'static str = "cluster.admit";
    type Request = ();
    type Response = ();
}

#[test]
fn garbage_on_the_quic_and_http_ports_leaves_the_cluster_healthy() {
    let _s = serial();
    let c = Cluster::start(3, &[]).unwrap();
    wait_members(&c.peers[0], 3, 3, 0);
    let mut rng = rand::thread_rng();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for p in &c.peers {
        for _ in 0..500 {
            let mut buf = vec![0u8; rng.gen_range(1..1400)];
            rng.fill_bytes(&mut buf);
            let _ = udp.send_to(&buf, p.quic);
        }
        for _ in 0..20 {
            if let Ok(mut s) = TcpStream::connect(p.http) {
                let mut buf = vec![0u8; rng.gen_range(1..4096)];
                rng.fill_bytes(&mut buf);
                let _ = s.write_all(&buf);
            }
        }
        let (code, _) = http_request(
            "POST",
            &format!("{}/admin/v1/meta/x", p.url()),
            Some("wrong"),
            None,
        )
        .unwrap();
        assert_eq!(code, 401, "admin API without the right token");
    }
    for p in &c.peers {
        p.wait_healthy(Duration::from_secs(5)).unwrap();
    }
    c.peers[2].put("still", "works").unwrap();
    assert_eq!(c.peers[1].get("still").unwrap().as_deref(), Some("works"));
}

#[test]
fn operator_errors_are_clear() {
    let _s = serial();
    let c = Cluster::start(1, &[]).unwrap();

    // HTTP port already in use.
    let mut busy = Peer::new(c.root.path(), "busy");
    busy.http = c.peers[0].http;
    busy.start().unwrap();
    assert_ne!(busy.wait_exit(Duration::from_secs(10)).unwrap(), Some(0));
    assert!(
        busy.log().contains("cannot listen for HTTP"),
        "{}",
        busy.log()
    );

    // Data dir of another cluster.
    let mut other = Cluster::start(1, &[]).unwrap();
    other.peers[0].kill9();
    let mut stray = Peer::new(c.root.path(), "stray");
    stray.data_dir = other.peers[0].data_dir.clone();
    stray.join = Some((c.peers[0].quic, c.token.clone()));
    stray.start().unwrap();
    assert_ne!(stray.wait_exit(Duration::from_secs(10)).unwrap(), Some(0));
    assert!(
        stray.log().contains("belongs to another cluster"),
        "{}",
        stray.log()
    );

    // Unreachable join address: retries, then gives up with a message.
    let mut lost = Peer::new(c.root.path(), "lost");
    lost.join = Some((
        format!("127.0.0.1:{}", free_udp_port()).parse().unwrap(),
        c.token.clone(),
    ));
    lost.extra_args
        .extend(["--join-timeout-s".to_string(), "2".to_string()]);
    let t0 = Instant::now();
    lost.start().unwrap();
    assert_ne!(lost.wait_exit(Duration::from_secs(15)).unwrap(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(12));
    assert!(lost.log().contains("could not reach"), "{}", lost.log());
}

#[test]
fn ctl_lists_members_prints_the_token_and_removes_a_member() {
    let _s = serial();
    let mut c = Cluster::start(3, &[]).unwrap();
    wait_members(&c.peers[0], 3, 3, 0);
    c.add_peer(&[]).unwrap();
    wait_members(&c.peers[0], 4, 3, 1);
    let (url1, dir1) = (c.peers[1].url(), c.peers[1].data_dir.clone());
    let ctl = |args: &[&str]| -> (bool, String) {
        let out = std::process::Command::new(stator_bin())
            .arg("ctl")
            .arg("--peer")
            .arg(&url1)
            .arg("--data-dir")
            .arg(&dir1)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, table) = ctl(&["members"]);
    assert!(ok, "{table}");
    assert!(
        table.contains("ROLE") && table.matches("voter").count() == 3 && table.contains("learner"),
        "{table}"
    );
    let (ok, json) = ctl(&["--json", "members"]);
    assert!(ok);
    let parsed: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed.len(), 4);
    let (ok, token) = ctl(&["join-token"]);
    assert!(ok);
    assert_eq!(token.trim(), c.token);

    // Remove a voter: the autopilot promotes the learner to keep three voters.
    let leader = c.leader().unwrap();
    let victim = (0..3).find(|&i| i != leader && i != 1).unwrap();
    let victim_id = c.peers[victim].node_id().unwrap();
    c.peers[victim].kill9();
    let (ok, out) = ctl(&["remove", &victim_id.to_string()]);
    assert!(ok, "{out}");
    let m = wait_for(SETTLE, || {
        let m = c.peers[1].members().ok()?;
        let (v, _) = roles(&m);
        let gone = m
            .iter()
            .any(|m| m["id"].as_u64() == Some(victim_id) && m["status"] == "left");
        (v == 3 && gone).then_some(m)
    })
    .expect("voters not restored after remove");
    assert_eq!(roles(&m).0, 3);

    let (ok, err) = ctl(&["remove", "12345"]);
    assert!(!ok && err.contains("no member"), "{err}");
    let bad = std::process::Command::new(stator_bin())
        .args([
            "ctl",
            "--peer",
            &c.peers[1].url(),
            "--token",
            "nope",
            "status",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("admin token"));
}

/// HTTP/2 clients (prior knowledge, as gRPC-style clients multiplex many requests over one
/// connection) are served on the same port as HTTP/1.1 ones, with the same answers.
#[test]
fn the_http_port_serves_http2_prior_knowledge_clients() {
    let _s = serial();
    let c = Cluster::start(3, &[]).unwrap();
    wait_members(&c.peers[0], 3, 3, 0);
    let token = c.peers[1].admin_token().unwrap();
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "-w",
                "\n%{http_version} %{http_code}",
            ])
            .args(args)
            .output()
            .expect("curl runs (tools/test.sh installs it)");
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let put = curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("authorization: Bearer {token}"),
        "-H",
        "content-type: application/json",
        "--data",
        r#"{"value":"over-h2"}"#,
        &format!("{}/admin/v1/meta/h2-key", c.peers[1].url()),
    ]);
    assert!(put.ends_with("\n2 200"), "PUT over HTTP/2: {put}");
    // Without the token, HTTP/2 gets the same refusal as HTTP/1.1.
    let refused = curl(&[&format!("{}/admin/v1/meta/h2-key", c.peers[1].url())]);
    assert!(
        refused.ends_with("\n2 401"),
        "no token over HTTP/2: {refused}"
    );
    assert_eq!(
        c.peers[2].get("h2-key").unwrap().as_deref(),
        Some("over-h2"),
        "the HTTP/2 write is replicated and readable over HTTP/1.1"
    );
}
