//! The node's cluster duties around Raft: joining, heartbeats, the leader's failure detector
//! and autopilot, and health. The decisions live in sans-IO modules (`failure_detector`,
//! `autopilot`); this module is the I/O shell that feeds them clocks and messages.

pub mod autopilot;
pub mod failure_detector;
pub mod health;
pub mod load;
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
use load::{LoadCollector, FANOUT_INTERVAL};
use rpc::{
    Admit, AdmitRequest, ClusterDatagram, Heartbeat, Join, JoinRequest, JoinResponse,
    PushLoadTable, MAX_DATAGRAM_BYTES,
};

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

/// Starts the background duties; returns the health tracker (which also holds the load board).
pub fn spawn_duties(
    endpoint: Endpoint,
    raft: Arc<RaftNode>,
    cfg: ClusterConfig,
    shutdown: watch::Receiver<bool>,
) -> Arc<Health> {
    let detector: Arc<Mutex<Option<LeaderDetector>>> = Arc::new(Mutex::new(None));
    let collector: Arc<Mutex<Option<LoadCollector>>> = Arc::new(Mutex::new(None));
    let health = Arc::new(Health::default());

    serve_load_table_pushes(&endpoint, health.clone());
    tokio::spawn(receive_datagrams(
        endpoint.clone(),
        detector.clone(),
        collector.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(send_heartbeats(
        endpoint.clone(),
        raft.clone(),
        cfg.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(fan_out_load(
        endpoint,
        raft.clone(),
        cfg.clone(),
        collector,
        health.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(lead(
        raft.clone(),
        cfg.clone(),
        detector,
        health.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(autopilot_loop(raft.clone(), cfg.clone(), shutdown.clone()));
    tokio::spawn(health::track(raft, cfg, health.clone(), shutdown));
    health
}

/// The detector of the current leadership term.
struct LeaderDetector {
    term: u64,
    detector: FailureDetector,
}

async fn receive_datagrams(
    endpoint: Endpoint,
    detector: Arc<Mutex<Option<LeaderDetector>>>,
    collector: Arc<Mutex<Option<LoadCollector>>>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut datagrams = endpoint.datagrams();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            msg = datagrams.recv() => {
                let Some((peer, bytes)) = msg else { return };
                let Some(node) = peer.node_id else { continue };
                match postcard::from_bytes::<ClusterDatagram>(&bytes) {
                    Ok(ClusterDatagram::Heartbeat(hb)) => {
                        let now = Instant::now();
                        if let Some(d) = detector.lock().as_mut() {
                            d.detector.heartbeat(node, now);
                        }
                        if let Some(c) = collector.lock().as_mut() {
                            c.record(node, hb.seq, hb.load, now);
                        }
                    }
                    Ok(ClusterDatagram::LoadTable(table)) => take_load_table(&health, node, table),
                    Err(e) => debug!(node, error = %e, "ignoring a malformed datagram"),
                }
            }
        }
    }
}

/// A load table counts only from the leader it names (the sender's certificate says who it is).
fn take_load_table(health: &Health, sender: u64, table: load::LoadTableMsg) {
    if table.leader != sender {
        debug!(
            sender,
            named = table.leader,
            "ignoring a load table sent on another node's behalf"
        );
        return;
    }
    health.load().offer(table, Instant::now());
}

fn serve_load_table_pushes(endpoint: &Endpoint, health: Arc<Health>) {
    endpoint.register::<PushLoadTable, _, _>(move |peer: PeerInfo, table| {
        let health = health.clone();
        async move {
            let sender = peer.node_id.ok_or_else(|| {
                RpcError::NotAuthorized("load tables come from cluster members".into())
            })?;
            take_load_table(&health, sender, table);
            Ok(())
        }
    });
}

async fn send_heartbeats(
    endpoint: Endpoint,
    raft: Arc<RaftNode>,
    cfg: ClusterConfig,
    health: Arc<Health>,
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
        if let Some(age) = health.load().table_age(Instant::now()) {
            metrics::gauge!("stator_router_load_table_age_seconds").set(age.as_secs_f64());
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
        let hb = ClusterDatagram::Heartbeat(Heartbeat {
            seq,
            load: health.load().local_report(),
        });
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

/// On the leader: every [`FANOUT_INTERVAL`], send the latest load of every node (its own
/// included) to every peer that is up, each send with that interval as its deadline.
async fn fan_out_load(
    endpoint: Endpoint,
    raft: Arc<RaftNode>,
    cfg: ClusterConfig,
    collector: Arc<Mutex<Option<LoadCollector>>>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(FANOUT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The leader's own report never travels as a heartbeat; number it here.
    let mut own_seq = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if !raft.is_leader() {
            *collector.lock() = None;
            continue;
        }
        let term = raft.metrics().borrow().current_term;
        let now = Instant::now();
        own_seq += 1;
        let table = {
            let mut guard = collector.lock();
            if guard.as_ref().is_none_or(|c| c.term() != term) {
                *guard = Some(LoadCollector::new(term));
            }
            let Some(c) = guard.as_mut() else { continue };
            c.record(cfg.node_id, own_seq, health.load().local_report(), now);
            c.table(cfg.node_id, now)
        };
        health.load().offer(table.clone(), now);
        let peers: Vec<std::net::SocketAddr> = raft
            .state()
            .borrow()
            .nodes
            .iter()
            .filter(|(id, n)| **id != cfg.node_id && n.status == NodeStatus::Up)
            .filter_map(|(_, n)| n.quic_addr.parse().ok())
            .collect();
        if peers.is_empty() {
            continue;
        }
        let datagram = match postcard::to_allocvec(&ClusterDatagram::LoadTable(table.clone())) {
            Ok(bytes) if bytes.len() <= MAX_DATAGRAM_BYTES => Some(bytes::Bytes::from(bytes)),
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, "cannot encode the load table");
                continue;
            }
        };
        let table = Arc::new(table);
        for addr in peers {
            let endpoint = endpoint.clone();
            let datagram = datagram.clone();
            let table = table.clone();
            tokio::spawn(async move {
                let sent = match datagram {
                    Some(bytes) => {
                        tokio::time::timeout(FANOUT_INTERVAL, endpoint.send_datagram(addr, bytes))
                            .await
                            .unwrap_or(Err(RpcError::Timeout))
                    }
                    None => {
                        endpoint
                            .call_timeout::<PushLoadTable>(addr, &table, FANOUT_INTERVAL)
                            .await
                    }
                };
                if let Err(e) = sent {
                    debug!(%addr, error = %e, "load table not sent");
                }
            });
        }
    }
}

/// On the leader: run the failure detector and commit status transitions.
async fn lead(
    raft: Arc<RaftNode>,
    cfg: ClusterConfig,
    detector: Arc<Mutex<Option<LeaderDetector>>>,
    health: Arc<Health>,
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
                let load = health.load().table().borrow().active_blocks(now);
                let moved = reassign_leases(&state, t.node, &load);
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
