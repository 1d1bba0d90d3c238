//! `stator-leasebench`: request-lease admissions on a 3-voter cluster (the commit path a
//! frontend uses), and detection → reassignment when a worker peer holding leases is killed.

pub mod admissions;
pub mod failover;
pub mod figures;
pub mod model_cluster;
pub mod raft_cluster;
pub mod run;
pub mod stream;
pub mod timeline;
