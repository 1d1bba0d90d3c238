//! The `stator` peer as a library: the binary (`main.rs`) parses the command line and calls
//! [`peer::run`] or [`ctl::run`]; benchmarks and tests reach the sans-IO cores (router, lease
//! logic) through here.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod ctl;
pub mod datadir;
pub mod frontend;
pub mod http;
pub mod leases;
pub mod openai;
pub mod peer;
pub mod router;
pub mod serving;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod test_fixtures;
pub mod util;
pub mod worker;
