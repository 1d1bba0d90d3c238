//! Deterministic application of commands. Each command is validated against the current state
//! before anything is mutated, so a refused command leaves the state exactly as it was.

use super::command::{Applied, Batch, BatchResponse, Command, CommandError, CommandResult};
use super::state::{
    ClusterState, Lease, NodeInfo, NodeStatus, PendingRole, Slo, WorkerId, WorkerInfo, WorkerRole,
    WorkerState, PLANNER_HISTORY_LIMIT,
};
use crate::types::NodeId;

pub const MAX_META_KEY_BYTES: usize = 256;
pub const MAX_META_VALUE_BYTES: usize = 64 * 1024;

impl ClusterState {
    /// Applies every command of `batch` in order; never panics.
    pub fn apply_batch(&mut self, batch: &Batch) -> BatchResponse {
        BatchResponse(batch.0.iter().map(|cmd| self.apply(cmd)).collect())
    }

    /// Applies one command. On `Err` the state is unchanged.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        match cmd {
            Command::InitCluster { cluster_id } => self.init_cluster(cluster_id),
            Command::RegisterNode {
                id,
                quic_addr,
                http_addr,
                labels,
                gpus,
                at_ms,
            } => {
                require_non_empty("quic_addr", quic_addr)?;
                require_non_empty("http_addr", http_addr)?;
                let joined_at_ms = match self.nodes.get(id) {
                    Some(known) if known.status != NodeStatus::Left => known.joined_at_ms,
                    _ => *at_ms,
                };
                self.nodes.insert(
                    *id,
                    NodeInfo {
                        quic_addr: quic_addr.clone(),
                        http_addr: http_addr.clone(),
                        labels: labels.clone(),
                        gpus: gpus.clone(),
                        status: NodeStatus::Up,
                        status_since_ms: *at_ms,
                        joined_at_ms,
                    },
                );
                Ok(Applied::Done)
            }
            Command::SetNodeStatus { id, status, at_ms } => {
                let node = self
                    .nodes
                    .get_mut(id)
                    .ok_or(CommandError::UnknownNode(*id))?;
                if node.status == NodeStatus::Left && *status != NodeStatus::Left {
                    return Err(CommandError::NodeLeft(*id));
                }
                if node.status != *status {
                    node.status = *status;
                    node.status_since_ms = *at_ms;
                }
                Ok(Applied::Done)
            }
            Command::RemoveNode { id, at_ms } => {
                let node = self
                    .nodes
                    .get_mut(id)
                    .ok_or(CommandError::UnknownNode(*id))?;
                if node.status != NodeStatus::Left {
                    node.status = NodeStatus::Left;
                    node.status_since_ms = *at_ms;
                }
                self.workers.retain(|w, _| w.node != *id);
                self.pending_roles.retain(|w, _| w.node != *id);
                Ok(Applied::Done)
            }
            Command::SetJoinSecret { secret_hash } => {
                let is_sha256_hex =
                    secret_hash.len() == 64 && secret_hash.bytes().all(|b| b.is_ascii_hexdigit());
                if !is_sha256_hex {
                    return Err(invalid("secret_hash must be 64 hex characters (SHA-256)"));
                }
                self.join_secret_hash = Some(secret_hash.to_ascii_lowercase());
                Ok(Applied::Done)
            }
            Command::PutMeta { key, value } => {
                require_non_empty("key", key)?;
                if key.len() > MAX_META_KEY_BYTES {
                    return Err(invalid(format!(
                        "meta key is {} bytes, at most {MAX_META_KEY_BYTES} allowed",
                        key.len()
                    )));
                }
                if value.len() > MAX_META_VALUE_BYTES {
                    return Err(invalid(format!(
                        "meta value is {} bytes, at most {MAX_META_VALUE_BYTES} allowed",
                        value.len()
                    )));
                }
                self.meta.insert(key.clone(), value.clone());
                Ok(Applied::Done)
            }
            Command::DeleteMeta { key } => match self.meta.remove(key) {
                Some(_) => Ok(Applied::Done),
                None => Err(CommandError::UnknownMetaKey(key.clone())),
            },
            Command::UpsertWorker { id, info } => {
                self.require_live_node(id.node)?;
                require_non_empty("model", &info.model)?;
                let info = match self.workers.get(id) {
                    // A restarting worker announces its start-up role again; the replicated
                    // role and state win (`--role` is the initial role), so a role change made
                    // since, or one still draining, survives the restart.
                    Some(known) => WorkerInfo {
                        role: known.role,
                        state: known.state,
                        ..info.clone()
                    },
                    None => info.clone(),
                };
                self.workers.insert(*id, info);
                Ok(Applied::Done)
            }
            Command::SetWorkerRole { id, role } => {
                let worker = self
                    .workers
                    .get_mut(id)
                    .ok_or(CommandError::UnknownWorker(*id))?;
                worker.role = *role;
                self.pending_roles.remove(id);
                Ok(Applied::Done)
            }
            Command::SetWorkerState { id, state } => {
                let worker = self
                    .workers
                    .get_mut(id)
                    .ok_or(CommandError::UnknownWorker(*id))?;
                worker.state = *state;
                self.pending_roles.remove(id);
                Ok(Applied::Done)
            }
            Command::ChangeWorkerRole { id, role, at_ms } => {
                self.change_worker_role(*id, *role, *at_ms)
            }
            Command::FinishRoleChange { id, role } => self.finish_role_change(*id, *role),
            Command::GrantLease {
                request_id,
                owner,
                frontend,
                at_ms,
            } => {
                require_non_empty("request_id", request_id)?;
                if self.leases.contains_key(request_id) {
                    return Err(CommandError::LeaseExists(request_id.clone()));
                }
                self.require_active_worker(owner)?;
                self.require_live_node(*frontend)?;
                self.leases.insert(
                    request_id.clone(),
                    Lease {
                        owner: *owner,
                        epoch: 1,
                        frontend: *frontend,
                        granted_at_ms: *at_ms,
                    },
                );
                Ok(Applied::LeaseGranted { epoch: 1 })
            }
            Command::ReleaseLease { request_id, epoch } => {
                let current_epoch = self
                    .leases
                    .get(request_id)
                    .ok_or_else(|| CommandError::UnknownLease(request_id.clone()))?
                    .epoch;
                if *epoch < current_epoch {
                    return Ok(Applied::StaleReleaseIgnored { current_epoch });
                }
                if *epoch > current_epoch {
                    return Err(CommandError::EpochMismatch {
                        expected: *epoch,
                        current: current_epoch,
                    });
                }
                self.leases.remove(request_id);
                Ok(Applied::LeaseReleased)
            }
            Command::ReassignLease {
                request_id,
                new_owner,
                expected_epoch,
            } => {
                let current = self
                    .leases
                    .get(request_id)
                    .ok_or_else(|| CommandError::UnknownLease(request_id.clone()))?
                    .epoch;
                if current != *expected_epoch {
                    return Err(CommandError::EpochMismatch {
                        expected: *expected_epoch,
                        current,
                    });
                }
                self.require_active_worker(new_owner)?;
                let lease = self
                    .leases
                    .get_mut(request_id)
                    .ok_or_else(|| CommandError::UnknownLease(request_id.clone()))?;
                lease.owner = *new_owner;
                lease.epoch = current + 1;
                Ok(Applied::LeaseReassigned { epoch: lease.epoch })
            }
            Command::SetPlanner { slo, decision } => {
                if let Some(slo) = slo {
                    validate_slo(slo)?;
                    self.planner.slo = Some(*slo);
                }
                if let Some(decision) = decision {
                    self.planner.targets = decision.targets;
                    self.planner.decisions.push_back(decision.clone());
                    while self.planner.decisions.len() > PLANNER_HISTORY_LIMIT {
                        self.planner.decisions.pop_front();
                    }
                }
                Ok(Applied::Done)
            }
            Command::PutModel { card } => {
                require_non_empty("model name", &card.name)?;
                if card.context_length == 0 {
                    return Err(invalid("context_length must be positive"));
                }
                self.models.insert(card.name.clone(), card.clone());
                Ok(Applied::Done)
            }
        }
    }

    fn change_worker_role(&mut self, id: WorkerId, role: WorkerRole, at_ms: u64) -> CommandResult {
        let worker = self
            .workers
            .get_mut(&id)
            .ok_or(CommandError::UnknownWorker(id))?;
        let from = worker.role;
        let pending = self.pending_roles.get(&id).copied();
        match pending {
            None if worker.role == role => Ok(Applied::RoleAlreadySet { role }),
            Some(_) if worker.role == role => {
                worker.state = WorkerState::Active;
                self.pending_roles.remove(&id);
                Ok(Applied::RoleChangeCancelled { role })
            }
            // Nothing runs on an `Off` worker: there is nothing to drain.
            None if worker.state == WorkerState::Off => {
                worker.role = role;
                Ok(Applied::RoleChanged { role })
            }
            // Retargeting keeps the original request time: the drain deadline does not restart.
            Some(p) => {
                self.pending_roles.insert(id, PendingRole { role, ..p });
                Ok(Applied::RoleChangePending { from, to: role })
            }
            None => {
                worker.state = WorkerState::Draining;
                self.pending_roles.insert(
                    id,
                    PendingRole {
                        role,
                        requested_at_ms: at_ms,
                    },
                );
                Ok(Applied::RoleChangePending { from, to: role })
            }
        }
    }

    fn finish_role_change(&mut self, id: WorkerId, role: WorkerRole) -> CommandResult {
        let pending = self
            .pending_roles
            .get(&id)
            .ok_or(CommandError::NoRoleChange(id))?
            .role;
        if pending != role {
            return Err(CommandError::RoleChangeMismatch {
                id,
                pending,
                given: role,
            });
        }
        let worker = self
            .workers
            .get_mut(&id)
            .ok_or(CommandError::UnknownWorker(id))?;
        worker.role = role;
        worker.state = WorkerState::Active;
        self.pending_roles.remove(&id);
        Ok(Applied::RoleChanged { role })
    }

    fn init_cluster(&mut self, cluster_id: &str) -> CommandResult {
        require_non_empty("cluster_id", cluster_id)?;
        if self.cluster_id == cluster_id {
            return Ok(Applied::Done);
        }
        if !self.cluster_id.is_empty() {
            return Err(CommandError::ClusterIdAlreadySet(self.cluster_id.clone()));
        }
        self.cluster_id = cluster_id.to_owned();
        Ok(Applied::Done)
    }

    fn require_live_node(&self, id: NodeId) -> Result<(), CommandError> {
        match self.nodes.get(&id) {
            None => Err(CommandError::UnknownNode(id)),
            Some(n) if n.status == NodeStatus::Left => Err(CommandError::NodeLeft(id)),
            Some(_) => Ok(()),
        }
    }

    fn require_active_worker(&self, id: &WorkerId) -> Result<(), CommandError> {
        match self.workers.get(id) {
            None => Err(CommandError::UnknownWorker(*id)),
            Some(w) if w.state != WorkerState::Active => Err(CommandError::WorkerNotActive(*id)),
            Some(_) => Ok(()),
        }
    }
}

fn invalid(msg: impl Into<String>) -> CommandError {
    CommandError::Invalid(msg.into())
}

fn require_non_empty(what: &str, value: &str) -> Result<(), CommandError> {
    if value.is_empty() {
        return Err(invalid(format!("{what} must not be empty")));
    }
    Ok(())
}

fn validate_slo(slo: &Slo) -> Result<(), CommandError> {
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !positive(slo.ttft_ms) || !positive(slo.itl_ms) {
        return Err(invalid("SLO values must be finite and positive"));
    }
    Ok(())
}
