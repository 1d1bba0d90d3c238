//! The node's cluster duties around Raft: joining, heartbeats, the leader's failure detector
//! and autopilot, and health. The decisions live in sans-IO modules (`failure_detector`,
//! `autopilot`); this module is the I/O shell that feeds them clocks and messages.

pub mod autopilot;
pub mod failure_detector;
pub mod health;
pub mod rpc;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use stator_raft::model::{Command, NodeInfo, NodeStatus};
use stator_raft::types::PeerAddr;
use stator_raft::RaftNode;
use stator_transport::{ClusterCa, Endpoint, JoinToken, PeerInfo, RpcError};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::leases::reassign::reassign_leases;
use crate::util::wall_ms;
use autopilot::{AutopilotConfig, MemberView};
use failure_detector::FailureDetector;
pub use health::Health;
use rpc::{Admit, AdmitRequest, Heartbeat, Join, JoinRequest, JoinResponse};

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub node_id: u64,
    pub heartbeat_interval: Duration,
    pub down_after: Duration,
    pub target_voters: usize,
    pub replace_voter_after: Duration,
}

/// Registers the join and admission methods.
pub fn serve_membership_rpcs(
    endpoint: &Endpoint,
    raft: Arc<RaftNode>,
    ca: Arc<ClusterCa>,
    cluster_id: String,
    admin_token: String,
) {
    let join_raft = raft.clone();
    endpoint.register_join::<Join, _, _>(move |peer: PeerInfo, req: JoinRequest| {
        let raft = join_raft.clone();
        let ca = ca.clone();
        let cluster_id = cluster_id.clone();
        let admin_token = admin_token.clone();
        async move {
            let state = raft.state().borrow().clone();
            let expected = state.join_secret_hash.as_deref().unwrap_or_default();
            let presented = JoinToken { ca_fingerprint: ca.fingerprint(), secret: req.secret.clone() }.secret_hash();
            if expected.is_empty() || !constant_time_eq(expected.as_bytes(), presented.as_bytes()) {
                warn!(from = %peer.addr, "join refused: wrong token secret");
                metrics::counter!("stator_cluster_join_refused_total").increment(1);
                return Err(RpcError::NotAuthorized("wrong join token".into()));
            }
            if state.nodes.contains_key(&req.node_id) {
                return Err(RpcError::Remote(format!("node id {} is already taken", req.node_id)));
            }
            let cert_der = ca
                .sign_node(req.node_id, &req.csr)
                .map_err(|e| RpcError::Remote(format!("cannot sign the certificate: {e}")))?;
            info!(node = req.node_id, from = %peer.addr, "issued a node certificate to a joining peer");
            Ok(JoinResponse {
                cluster_id,
                cert_der,
                ca_cert_der: ca.cert_der(),
                ca_key_pem: ca.key_pem(),
                admin_token,
            })
        }
    });

    endpoint.register::<Admit, _, _>(move |peer: PeerInfo, req: AdmitRequest| {
        let raft = raft.clone();
        async move {
            let node = peer.node_id.ok_or_else(|| {
                RpcError::NotAuthorized("admission needs a cluster certificate".into())
            })?;
            raft.add_learner(
                node,
                PeerAddr {
                    quic: req.quic_addr.clone(),
                },
            )
            .await
            .map_err(|e| RpcError::Remote(format!("cannot add learner: {e}")))?;
            let cmd = Command::RegisterNode {
                id: node,
                quic_addr: req.quic_addr,
                http_addr: req.http_addr,
                labels: req.labels,
                gpus: req.gpus,
                at_ms: wall_ms(),
            };
            raft.write(vec![cmd])
                .await
                .map_err(|e| RpcError::Remote(format!("cannot register node: {e}")))?;
            info!(node, "admitted a new member as learner");
            Ok(())
        }
    });
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The command that registers (or refreshes) a node's addresses in the replicated state.
pub fn register_command(id: u64, info: &NodeInfo) -> Command {
    Command::RegisterNode {
        id,
        quic_addr: info.quic_addr.clone(),
        http_addr: info.http_addr.clone(),
        labels: info.labels.clone(),
        gpus: info.gpus.clone(),
        at_ms: wall_ms(),
    }
}

/// Starts the background duties; returns the health tracker.
pub fn spawn_duties(
    endpoint: Endpoint,
    raft: Arc<RaftNode>,
    cfg: ClusterConfig,
    shutdown: watch::Receiver<bool>,
) -> Arc<Health> {
    let detector: Arc<Mutex<Option<LeaderDetector>>> = Arc::new(Mutex::new(None));
    let health = Arc::new(Health::default());

    tokio::spawn(receive_heartbeats(
        endpoint.clone(),
        detector.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(send_heartbeats(
        endpoint,
        raft.clone(),
        cfg.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(lead(raft.clone(), cfg.clone(), detector, shutdown.clone()));
    tokio::spawn(autopilot_loop(raft.clone(), cfg.clone(), shutdown.clone()));
    tokio::spawn(health::track(raft, cfg, health.clone(), shutdown));
    health
}

/// The detector of the current leadership term.
struct LeaderDetector {
    term: u64,
    detector: FailureDetector,
}

async fn receive_heartbeats(
    endpoint: Endpoint,
    detector: Arc<Mutex<Option<LeaderDetector>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut datagrams = endpoint.datagrams();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            msg = datagrams.recv() => {
                let Some((peer, bytes)) = msg else { return };
                let Some(node) = peer.node_id else { continue };
                match postcard::from_bytes::<Heartbeat>(&bytes) {
                    Ok(_hb) => {
                        if let Some(d) = detector.lock().as_mut() {
                            d.detector.heartbeat(node, Instant::now());
                        }
                    }
                    Err(e) => debug!(node, error = %e, "ignoring a malformed heartbeat"),
                }
            }
        }
    }
}

async fn send_heartbeats(
    endpoint: Endpoint,
    raft: Arc<RaftNode>,
    cfg: ClusterConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let Some((leader, addr)) = raft.leader() else {
            continue;
        };
        if leader == cfg.node_id {
            continue;
        }
        let Ok(addr) = addr.quic.parse() else {
            continue;
        };
        seq += 1;
        let hb = Heartbeat {
            seq,
            ..Default::default()
        };
        let Ok(bytes) = postcard::to_allocvec(&hb) else {
            continue;
        };
        // Best effort with a deadline: a dead leader must not stall the next beat.
        let send = endpoint.send_datagram(addr, bytes.into());
        if let Ok(Err(e)) = tokio::time::timeout(cfg.heartbeat_interval, send).await {
            debug!(error = %e, "heartbeat not sent");
        }
    }
}

/// On the leader: run the failure detector and commit status transitions.
async fn lead(
    raft: Arc<RaftNode>,
    cfg: ClusterConfig,
    detector: Arc<Mutex<Option<LeaderDetector>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let period = (cfg.down_after / 10).clamp(Duration::from_millis(5), Duration::from_millis(25));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let term = raft.metrics().borrow().current_term;
        if !raft.is_leader() {
            *detector.lock() = None;
            continue;
        }
        let now = Instant::now();
        let state = raft.state().borrow().clone();
        let members: BTreeMap<u64, NodeStatus> = state
            .nodes
            .iter()
            .filter(|(_, n)| n.status != NodeStatus::Left)
            .map(|(id, n)| (*id, n.status))
            .collect();
        let transitions = {
            let mut guard = detector.lock();
            let entry = guard.get_or_insert_with(|| LeaderDetector {
                term,
                detector: FailureDetector::new(cfg.down_after, now),
            });
            if entry.term != term {
                *entry = LeaderDetector {
                    term,
                    detector: FailureDetector::new(cfg.down_after, now),
                };
            }
            entry.detector.heartbeat(cfg.node_id, now);
            for id in members.keys() {
                let age = entry.detector.silence(*id, now).as_secs_f64();
                metrics::gauge!("stator_cluster_heartbeat_age_seconds", "node" => id.to_string())
                    .set(age);
            }
            entry.detector.tick(&members, now)
        };
        for t in transitions {
            let raft = raft.clone();
            let detector = detector.clone();
            let to = t.to;
            info!(node = t.node, to = ?to, silent_ms = t.silent_for.as_millis() as u64, "failure detector transition");
            metrics::counter!("stator_cluster_detections_total", "to" => format!("{to:?}").to_lowercase()).increment(1);
            // A dead peer's leases move in the same entry that marks it Down, so no frontend
            // can observe the Down without the reassignment.
            let mut cmds = vec![Command::SetNodeStatus {
                id: t.node,
                status: to,
                at_ms: wall_ms(),
            }];
            if to == NodeStatus::Down {
                let moved = reassign_leases(&state, t.node, &BTreeMap::new());
                if !moved.is_empty() {
                    info!(
                        node = t.node,
                        leases = moved.len(),
                        "reassigning the leases of a dead peer"
                    );
                }
                cmds.extend(moved);
            }
            tokio::spawn(async move {
                if let Err(e) = raft.write(cmds).await {
                    warn!(node = t.node, error = %e, "could not commit status transition");
                    if let Some(d) = detector.lock().as_mut() {
                        d.detector.proposal_failed(t.node);
                    }
                }
            });
        }
    }
}

/// On the leader: keep the voter count at its target.
async fn autopilot_loop(
    raft: Arc<RaftNode>,
    cfg: ClusterConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let ap = AutopilotConfig {
        target_voters: cfg.target_voters,
        replace_after: cfg.replace_voter_after,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if !raft.is_leader() {
            continue;
        }
        let (voters, learners) = raft.membership();
        let state = raft.state().borrow().clone();
        let metrics = raft.metrics().borrow().clone();
        let last_log = metrics.last_log_index.unwrap_or(0);
        let matched: BTreeMap<u64, u64> = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        let now = wall_ms();
        let views: BTreeMap<u64, MemberView> = state
            .nodes
            .iter()
            .map(|(id, n)| {
                let caught_up = *id == cfg.node_id
                    || matched
                        .get(id)
                        .is_some_and(|m| last_log.saturating_sub(*m) <= 64);
                (
                    *id,
                    MemberView {
                        status: n.status,
                        in_status_for: Duration::from_millis(now.saturating_sub(n.status_since_ms)),
                        joined_at_ms: n.joined_at_ms,
                        caught_up,
                    },
                )
            })
            .collect();
        update_member_gauges(&voters, &learners, &views);
        if let Some(next) = autopilot::plan(&voters, &learners, &views, &ap) {
            info!(from = ?voters, to = ?next, "autopilot: changing voters");
            if let Err(e) = raft.change_voters(next).await {
                warn!(error = %e, "autopilot: voter change failed");
            }
        }
    }
}

fn update_member_gauges(
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
    views: &BTreeMap<u64, MemberView>,
) {
    let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for role in ["voter", "learner", "none"] {
        for status in ["up", "down", "left"] {
            counts.insert((role, status), 0);
        }
    }
    for (id, v) in views {
        let role = if voters.contains(id) {
            "voter"
        } else if learners.contains(id) {
            "learner"
        } else {
            "none"
        };
        let status = match v.status {
            NodeStatus::Up => "up",
            NodeStatus::Down => "down",
            NodeStatus::Left => "left",
        };
        *counts.entry((role, status)).or_default() += 1;
    }
    for ((role, status), n) in counts {
        metrics::gauge!("stator_cluster_members", "role" => role, "status" => status).set(n as f64);
    }
}
