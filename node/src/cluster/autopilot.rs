//! Keeps the voter count at its target, like Consul's autopilot: a pure decision function the
//! leader calls periodically.
//!
//! Rules, in order:
//! 1. A voter that has been `Down` longer than `replace_after` (or has `Left`) is replaced by a
//!    healthy learner, one change at a time.
//! 2. While there are fewer voters than the target, the oldest healthy learner is promoted.
//!
//! A change is only proposed when a healthy learner exists, so the voter count never shrinks
//! below what it was by the autopilot's own doing; removing a member outright is an operator
//! action (`stator ctl remove`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use stator_raft::model::NodeStatus;

#[derive(Clone, Debug)]
pub struct AutopilotConfig {
    /// Desired number of voters (odd).
    pub target_voters: usize,
    /// How long a voter may stay `Down` before it is replaced.
    pub replace_after: Duration,
}

/// What the autopilot sees of one member.
#[derive(Clone, Debug)]
pub struct MemberView {
    pub status: NodeStatus,
    /// Time in the current status (from the replicated `status_since` and the leader's clock).
    pub in_status_for: Duration,
    /// Join order, lower first: promotion goes to the longest-standing learner.
    pub joined_at_ms: u64,
    /// The learner's log is close enough to the leader's to vote without stalling commits.
    pub caught_up: bool,
}

/// Returns the new voter set when a change is due.
pub fn plan(
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
    members: &BTreeMap<u64, MemberView>,
    cfg: &AutopilotConfig,
) -> Option<BTreeSet<u64>> {
    let healthy = |id: &u64| {
        members
            .get(id)
            .is_some_and(|m| m.status == NodeStatus::Up && m.caught_up)
    };
    let mut candidates: Vec<u64> = learners.iter().copied().filter(healthy).collect();
    candidates.sort_by_key(|id| (members.get(id).map_or(u64::MAX, |m| m.joined_at_ms), *id));
    let best = candidates.first().copied();

    let failed_voter = voters.iter().copied().find(|id| match members.get(id) {
        None => true,
        Some(m) => {
            m.status == NodeStatus::Left
                || (m.status == NodeStatus::Down && m.in_status_for >= cfg.replace_after)
        }
    });
    if let (Some(failed), Some(learner)) = (failed_voter, best) {
        let mut next = voters.clone();
        next.remove(&failed);
        next.insert(learner);
        return Some(next);
    }
    if voters.len() < cfg.target_voters {
        if let Some(learner) = best {
            let mut next = voters.clone();
            next.insert(learner);
            return Some(next);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(status: NodeStatus, secs: u64, joined: u64) -> MemberView {
        MemberView {
            status,
            in_status_for: Duration::from_secs(secs),
            joined_at_ms: joined,
            caught_up: true,
        }
    }
    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }
    fn cfg() -> AutopilotConfig {
        AutopilotConfig {
            target_voters: 3,
            replace_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn promotes_learners_until_the_target_in_join_order() {
        let members = BTreeMap::from([
            (1, view(NodeStatus::Up, 100, 1)),
            (7, view(NodeStatus::Up, 100, 3)),
            (5, view(NodeStatus::Up, 100, 2)),
        ]);
        let next = plan(&set(&[1]), &set(&[5, 7]), &members, &cfg()).unwrap();
        assert_eq!(next, set(&[1, 5]));
        let next = plan(&next, &set(&[7]), &members, &cfg()).unwrap();
        assert_eq!(next, set(&[1, 5, 7]));
        assert!(plan(&next, &set(&[]), &members, &cfg()).is_none());
    }

    #[test]
    fn a_fourth_peer_stays_learner() {
        let members = BTreeMap::from([
            (1, view(NodeStatus::Up, 100, 1)),
            (2, view(NodeStatus::Up, 100, 2)),
            (3, view(NodeStatus::Up, 100, 3)),
            (4, view(NodeStatus::Up, 100, 4)),
        ]);
        assert!(plan(&set(&[1, 2, 3]), &set(&[4]), &members, &cfg()).is_none());
    }

    #[test]
    fn a_voter_down_too_long_is_replaced_by_a_healthy_learner() {
        let mut members = BTreeMap::from([
            (1, view(NodeStatus::Up, 100, 1)),
            (2, view(NodeStatus::Up, 100, 2)),
            (3, view(NodeStatus::Down, 5, 3)),
            (4, view(NodeStatus::Up, 100, 4)),
        ]);
        assert!(
            plan(&set(&[1, 2, 3]), &set(&[4]), &members, &cfg()).is_none(),
            "not yet"
        );
        members.get_mut(&3).unwrap().in_status_for = Duration::from_secs(11);
        assert_eq!(
            plan(&set(&[1, 2, 3]), &set(&[4]), &members, &cfg()).unwrap(),
            set(&[1, 2, 4])
        );
    }

    #[test]
    fn no_healthy_learner_means_no_change() {
        let mut lagging = view(NodeStatus::Up, 100, 4);
        lagging.caught_up = false;
        let members = BTreeMap::from([
            (1, view(NodeStatus::Up, 100, 1)),
            (2, view(NodeStatus::Up, 100, 2)),
            (3, view(NodeStatus::Down, 60, 3)),
            (4, lagging),
            (5, view(NodeStatus::Down, 60, 5)),
        ]);
        assert!(plan(&set(&[1, 2, 3]), &set(&[4, 5]), &members, &cfg()).is_none());
    }

    #[test]
    fn a_voter_missing_from_the_state_is_replaced() {
        let members = BTreeMap::from([
            (1, view(NodeStatus::Up, 100, 1)),
            (2, view(NodeStatus::Up, 100, 2)),
            (4, view(NodeStatus::Up, 100, 4)),
        ]);
        assert_eq!(
            plan(&set(&[1, 2, 3]), &set(&[4]), &members, &cfg()).unwrap(),
            set(&[1, 2, 4])
        );
    }
}
