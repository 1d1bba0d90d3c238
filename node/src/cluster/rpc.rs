//! The node's own QUIC methods (Raft registers its methods itself).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stator_raft::model::GpuInfo;
use stator_transport::{Method, NodeCsr};

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

/// Heartbeat datagram from a peer to the leader.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender's monotonic sequence number (lets the leader ignore reordered datagrams).
    pub seq: u64,
    pub load: LoadReport,
}

/// What a peer reports about its load with each heartbeat.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub queue_depth: u32,
    pub running_seqs: u32,
    pub kv_blocks_used: u32,
    pub kv_blocks_total: u32,
}
