//! Cluster PKI: the CA, node keys and certificates, stored identities and join tokens.

mod ca;
mod fingerprint;
mod identity;
pub(crate) mod names;
mod node_key;
pub(crate) mod pem;
mod token;

pub use ca::ClusterCa;
pub use fingerprint::Fingerprint;
pub use identity::NodeIdentity;
pub use node_key::{NodeCsr, NodeKey};
pub use token::JoinToken;
