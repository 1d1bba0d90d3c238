//! The frontend side of remote generation: [`RemoteTokenSource`] runs each request on a worker
//! of the cluster under a Raft lease, and moves it, token-exact, when that worker goes away.

mod flight;
mod kv_feed;
mod load;
mod remote;

pub use remote::{FrontendConfig, RemoteTokenSource};
