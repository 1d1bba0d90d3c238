//! The node's own QUIC methods (Raft registers its methods itself).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stator_raft::model::GpuInfo;
use stator_transport::{Method, NodeCsr};

use super::load::LoadTableMsg;

/// Step 1 of joining, served on join connections (no client certificate yet): prove knowledge
/// of the join secret and get a node certificate signed by the cluster CA.
pub struct Join;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub secret: String,
    pub node_id: u64,
    pub csr: NodeCsr,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub cert_der: Vec<u8>,
    pub ca_cert_der: Vec<u8>,
    /// Every member can sign joiners' certificates, so each holds the CA key.
    pub ca_key_pem: String,
    pub admin_token: String,
}

impl Method for Join {
    const NAME: &'static str = "cluster.join";
    type Request = JoinRequest;
    type Response = JoinResponse;
}

/// Step 2, now with a cluster certificate: become a Raft learner and a registered node.
pub struct Admit;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdmitRequest {
    pub quic_addr: String,
    pub http_addr: String,
    pub labels: BTreeMap<String, String>,
    pub gpus: Vec<GpuInfo>,
}

impl Method for Admit {
    const NAME: &'static str = "cluster.admit";
    type Request = AdmitRequest;
    type Response = ();
}

/// Every datagram peers exchange; one receiver per endpoint tells them apart by this tag.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClusterDatagram {
    Heartbeat(Heartbeat),
    LoadTable(LoadTableMsg),
}

/// Largest datagram payload we send: below QUIC's smallest datagram size on a 1280-byte path.
pub const MAX_DATAGRAM_BYTES: usize = 1100;

/// The leader's load table, for tables too large for one datagram.
pub struct PushLoadTable;

impl Method for PushLoadTable {
    const NAME: &'static str = "cluster.load_table";
    type Request = LoadTableMsg;
    type Response = ();
}

/// Heartbeat datagram from a peer to the leader.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender's monotonic sequence number (lets the leader ignore reordered datagrams).
    pub seq: u64,
    pub load: LoadReport,
}

/// What a peer reports about its load with each heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    pub queue_depth: u32,
    pub running_seqs: u32,
    pub kv_blocks_used: u32,
    pub kv_blocks_total: u32,
}
