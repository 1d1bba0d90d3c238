//! `stator-clusterbench`: replicated-write throughput and latency, leader failover and failure
//! detection of a 3-peer stator cluster, side by side with a 3-member etcd cluster.

pub mod etcd_client;
pub mod etcd_cluster;
pub mod figures;
pub mod h2;
pub mod load;
pub mod plots;
pub mod process;
pub mod run;
pub mod stator_cluster;
pub mod target;
pub mod trials;
pub mod wire;
