//! Whether the local copy of the replicated state lets a worker stream for a lease.

use stator_raft::model::{ClusterState, WorkerId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseStanding {
    /// The lease names this worker at this epoch.
    Held,
    /// The local state has not caught up with the grant (or reassignment) yet.
    NotYet,
    /// The lease moved on: another owner, a newer epoch, or released. Stop for good.
    Lost(String),
}

/// `seen_held`: the lease was already observed held, so its absence means it was released
/// rather than not yet applied here.
pub fn standing(
    state: &ClusterState,
    request_id: &str,
    me: WorkerId,
    epoch: u64,
    seen_held: bool,
) -> LeaseStanding {
    match state.leases.get(request_id) {
        None if seen_held => LeaseStanding::Lost("the lease was released".into()),
        None => LeaseStanding::NotYet,
        Some(l) if l.epoch > epoch => LeaseStanding::Lost(format!(
            "the lease moved to epoch {} ({})",
            l.epoch, l.owner
        )),
        Some(l) if l.epoch < epoch => LeaseStanding::NotYet,
        Some(l) if l.owner != me => LeaseStanding::Lost(format!(
            "the lease at epoch {epoch} belongs to worker {}",
            l.owner
        )),
        Some(_) => LeaseStanding::Held,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_raft::model::Lease;

    fn with_lease(owner: WorkerId, epoch: u64) -> ClusterState {
        let mut s = ClusterState::default();
        s.leases.insert(
            "r".into(),
            Lease {
                owner,
                epoch,
                frontend: 1,
                granted_at_ms: 0,
            },
        );
        s
    }

    const ME: WorkerId = WorkerId { node: 7, slot: 0 };
    const OTHER: WorkerId = WorkerId { node: 8, slot: 0 };

    #[test]
    fn a_worker_streams_only_for_its_own_lease_at_the_named_epoch() {
        assert_eq!(
            standing(&with_lease(ME, 2), "r", ME, 2, false),
            LeaseStanding::Held
        );
        assert_eq!(
            standing(&with_lease(ME, 1), "r", ME, 2, false),
            LeaseStanding::NotYet,
            "reassignment not applied here yet"
        );
        assert!(matches!(
            standing(&with_lease(OTHER, 3), "r", ME, 2, true),
            LeaseStanding::Lost(_)
        ));
        assert!(matches!(
            standing(&with_lease(OTHER, 2), "r", ME, 2, false),
            LeaseStanding::Lost(_)
        ));
    }

    #[test]
    fn an_absent_lease_is_pending_before_it_was_seen_and_released_after() {
        let empty = ClusterState::default();
        assert_eq!(standing(&empty, "r", ME, 1, false), LeaseStanding::NotYet);
        assert!(matches!(
            standing(&empty, "r", ME, 1, true),
            LeaseStanding::Lost(_)
        ));
    }
}
