//! Request leases: who may stream tokens for a request, and how a request moves when its owner
//! dies. Pure logic; the I/O lives in the frontend and the leader's duties.

pub mod reassign;
pub mod stream;
