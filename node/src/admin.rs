//! The admin API under `/admin/v1`, behind the admin bearer token. `stator ctl` is its client.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use stator_raft::model::{
    Applied, ClusterState, Command, CommandError, NodeStatus, WorkerId, WorkerState,
};
use tracing::info;

use crate::cli::{parse_role, role_name};
use crate::http::App;
use crate::worker::drain::{request_role_change, RoleChangeError};

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/admin/v1/status", get(status))
        .route("/admin/v1/members", get(members))
        .route("/admin/v1/join-token", get(join_token))
        .route("/admin/v1/members/{id}/remove", post(remove))
        .route("/admin/v1/leave", post(leave))
        .route("/admin/v1/workers", get(workers))
        .route("/admin/v1/workers/{node}/{slot}/role", post(set_role))
        .route("/admin/v1/leases", get(leases))
        .route("/admin/v1/meta", get(meta_list))
        .route(
            "/admin/v1/meta/{key}",
            get(meta_get).put(meta_put).delete(meta_delete),
        )
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token))
        .with_state(app)
}

/// An admin API error: `{"error": {"message", "code"}}` with a status.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self
            .0
            .canonical_reason()
            .unwrap_or("error")
            .to_lowercase()
            .replace(' ', "_");
        (
            self.0,
            Json(serde_json::json!({"error": {"message": self.1, "code": code}})),
        )
            .into_response()
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn require_token(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let expected = app.admin_token.as_bytes();
    let ok = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !ok {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer TOKEN; see DATA_DIR/admin.token)"
                .into(),
        )
        .into_response();
    }
    next.run(req).await
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct StatusView {
    pub node_id: u64,
    pub cluster_id: String,
    pub leader_id: Option<u64>,
    pub is_leader: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub healthy: bool,
    pub health_reason: Option<String>,
}

async fn status(State(app): State<Arc<App>>) -> Json<StatusView> {
    let m = app.raft.metrics().borrow().clone();
    let (voters, learners) = app.raft.membership();
    let health = app.health.check(&app.raft);
    Json(StatusView {
        node_id: app.node_id,
        cluster_id: app.cluster_id.clone(),
        leader_id: m.current_leader,
        is_leader: m.current_leader == Some(app.node_id),
        term: m.current_term,
        last_log_index: m.last_log_index.unwrap_or(0),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        voters: voters.into_iter().collect(),
        learners: learners.into_iter().collect(),
        healthy: health.is_ok(),
        health_reason: health.err(),
    })
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct MemberView {
    pub id: u64,
    pub quic_addr: String,
    pub http_addr: String,
    /// voter, learner, or none (registered but not in the Raft membership: left or joining).
    pub raft_role: String,
    pub status: String,
    pub status_since_ms: u64,
    pub is_leader: bool,
    pub labels: std::collections::BTreeMap<String, String>,
}

async fn members(State(app): State<Arc<App>>) -> Json<Vec<MemberView>> {
    let state = app.raft.state().borrow().clone();
    let (voters, learners) = app.raft.membership();
    let leader = app.raft.leader().map(|(id, _)| id);
    Json(
        state
            .nodes
            .iter()
            .map(|(id, n)| MemberView {
                id: *id,
                quic_addr: n.quic_addr.clone(),
                http_addr: n.http_addr.clone(),
                raft_role: if voters.contains(id) {
                    "voter"
                } else if learners.contains(id) {
                    "learner"
                } else {
                    "none"
                }
                .into(),
                status: status_name(n.status).into(),
                status_since_ms: n.status_since_ms,
                is_leader: leader == Some(*id),
                labels: n.labels.clone(),
            })
            .collect(),
    )
}

pub fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Up => "up",
        NodeStatus::Down => "down",
        NodeStatus::Left => "left",
    }
}

async fn join_token(State(app): State<Arc<App>>) -> Result<Json<serde_json::Value>, ApiError> {
    let token = app
        .join_token
        .clone()
        .ok_or_else(|| unavailable("this peer has no join token on disk (DATA_DIR/join.token)"))?;
    Ok(Json(serde_json::json!({"token": token})))
}

async fn remove(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !app.raft.state().borrow().nodes.contains_key(&id) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no member with id {id}"),
        ));
    }
    remove_member(&app, id).await?;
    Ok(Json(serde_json::json!({"removed": id})))
}

async fn remove_member(app: &App, id: u64) -> Result<(), ApiError> {
    app.raft.remove_member(id).await.map_err(unavailable)?;
    app.raft
        .write(vec![Command::RemoveNode {
            id,
            at_ms: crate::util::wall_ms(),
        }])
        .await
        .map_err(unavailable)?;
    info!(node = id, "member removed");
    Ok(())
}

async fn leave(State(app): State<Arc<App>>) -> Result<Json<serde_json::Value>, ApiError> {
    remove_member(&app, app.node_id).await?;
    // Let the response go out before the server stops.
    let shutdown = app.shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let _ = shutdown.send(true);
    });
    Ok(Json(serde_json::json!({"left": app.node_id})))
}

async fn meta_list(State(app): State<Arc<App>>) -> Result<Json<serde_json::Value>, ApiError> {
    app.raft.linearizable_barrier().await.map_err(unavailable)?;
    let state = app.raft.state().borrow().clone();
    Ok(Json(serde_json::json!(state.meta)))
}

async fn meta_get(
    State(app): State<Arc<App>>,
    Path(key): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let index = app.raft.linearizable_barrier().await.map_err(unavailable)?;
    let state = app.raft.state().borrow().clone();
    match state.meta.get(&key) {
        Some(v) => Ok(Json(
            serde_json::json!({"key": key, "value": v, "index": index}),
        )),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no key '{key}'"))),
    }
}

#[derive(Deserialize)]
struct PutBody {
    value: String,
}

async fn meta_put(
    State(app): State<Arc<App>>,
    Path(key): Path<String>,
    body: Result<Json<PutBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("body must be {{\"value\": \"...\"}}: {e}"),
        )
    })?;
    // Acknowledged once committed: GETs take a linearizable barrier, so they see it anyway.
    let out = app
        .raft
        .write_committed(vec![Command::PutMeta {
            key: key.clone(),
            value: body.value,
        }])
        .await
        .map_err(unavailable)?;
    Ok(Json(serde_json::json!({"key": key, "index": out.index})))
}

async fn meta_delete(
    State(app): State<Arc<App>>,
    Path(key): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let out = app
        .raft
        .write_committed(vec![Command::DeleteMeta { key: key.clone() }])
        .await
        .map_err(unavailable)?;
    Ok(Json(serde_json::json!({"key": key, "index": out.index})))
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WorkerView {
    /// NODE/SLOT, as `ctl set-role` takes it.
    pub id: String,
    pub node: u64,
    pub slot: u32,
    /// The node's HTTP address and status (up, down, left).
    pub node_addr: String,
    pub node_status: String,
    pub role: String,
    /// active, draining or off.
    pub state: String,
    /// The role it switches to once drained.
    pub pending_role: Option<String>,
    pub model: String,
    pub device: String,
    pub kv_blocks_total: u64,
    pub leases_held: usize,
}

/// Every worker of the replicated state, in id order.
pub fn worker_views(state: &ClusterState) -> Vec<WorkerView> {
    state
        .workers
        .iter()
        .map(|(id, w)| {
            let node = state.nodes.get(&id.node);
            WorkerView {
                id: id.to_string(),
                node: id.node,
                slot: id.slot,
                node_addr: node.map(|n| n.http_addr.clone()).unwrap_or_default(),
                node_status: node.map_or("unknown", |n| status_name(n.status)).into(),
                role: role_name(w.role).into(),
                state: worker_state_name(w.state).into(),
                pending_role: state
                    .pending_roles
                    .get(id)
                    .map(|p| role_name(p.role).to_string()),
                model: w.model.clone(),
                device: w.device.clone(),
                kv_blocks_total: w.kv_blocks_total,
                leases_held: state.leases_of(*id).count(),
            }
        })
        .collect()
}

pub fn worker_state_name(s: WorkerState) -> &'static str {
    match s {
        WorkerState::Active => "active",
        WorkerState::Draining => "draining",
        WorkerState::Off => "off",
    }
}

async fn workers(State(app): State<Arc<App>>) -> Json<Vec<WorkerView>> {
    Json(worker_views(&app.raft.state().borrow()))
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LeaseView {
    pub request_id: String,
    /// Owner worker, NODE/SLOT.
    pub owner: String,
    pub epoch: u64,
    pub frontend: u64,
    pub granted_at_ms: u64,
}

async fn leases(State(app): State<Arc<App>>) -> Json<Vec<LeaseView>> {
    let state = app.raft.state().borrow().clone();
    Json(
        state
            .leases
            .iter()
            .map(|(request_id, l)| LeaseView {
                request_id: request_id.clone(),
                owner: l.owner.to_string(),
                epoch: l.epoch,
                frontend: l.frontend,
                granted_at_ms: l.granted_at_ms,
            })
            .collect(),
    )
}

#[derive(Deserialize)]
struct SetRoleBody {
    role: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SetRoleView {
    pub worker: String,
    /// False when the worker already had the role (nothing was done).
    pub changed: bool,
    /// The worker's role now, and the one it switches to once drained.
    pub role: String,
    pub pending_role: Option<String>,
    pub message: String,
}

async fn set_role(
    State(app): State<Arc<App>>,
    Path((node, slot)): Path<(u64, u32)>,
    body: Result<Json<SetRoleBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SetRoleView>, ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("body must be {{\"role\": \"prefill|decode|aggregated\"}}: {e}"),
        )
    })?;
    let role = parse_role(&body.role).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let id = WorkerId { node, slot };
    let applied = request_role_change(&app.raft, id, role)
        .await
        .map_err(|e| match e {
            RoleChangeError::Refused(CommandError::UnknownWorker(_)) => ApiError(
                StatusCode::NOT_FOUND,
                format!("no worker {id} (see `stator ctl roles`)"),
            ),
            RoleChangeError::Refused(e) => ApiError(StatusCode::CONFLICT, e.to_string()),
            e @ RoleChangeError::NotCommitted(_) => unavailable(e),
        })?;
    let (changed, message) = match applied {
        Applied::RoleChangePending { from, to } => (
            true,
            format!(
                "worker {id} is draining: it takes no new requests and switches from {} to {} once its requests are done",
                role_name(from),
                role_name(to)
            ),
        ),
        Applied::RoleAlreadySet { role } => (
            false,
            format!("worker {id} already has role {}: nothing to do", role_name(role)),
        ),
        Applied::RoleChangeCancelled { role } => (
            true,
            format!(
                "cancelled the pending role change: worker {id} stays {} and is active again",
                role_name(role)
            ),
        ),
        Applied::RoleChanged { role } => (
            true,
            format!("worker {id} (off) now has role {}", role_name(role)),
        ),
        other => (true, format!("worker {id}: {other:?}")),
    };
    let state = app.raft.state().borrow().clone();
    Ok(Json(SetRoleView {
        worker: id.to_string(),
        changed,
        role: state
            .workers
            .get(&id)
            .map_or("unknown", |w| role_name(w.role))
            .into(),
        pending_role: state
            .pending_roles
            .get(&id)
            .map(|p| role_name(p.role).to_string()),
        message,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_raft::model::{Lease, NodeInfo, WorkerInfo, WorkerRole};

    #[test]
    fn the_roles_table_shows_pending_roles_and_leases_held() {
        let mut s = ClusterState::default();
        s.nodes.insert(
            7,
            NodeInfo {
                quic_addr: "10.0.0.7:7400".into(),
                http_addr: "10.0.0.7:8000".into(),
                labels: Default::default(),
                gpus: vec![],
                status: NodeStatus::Down,
                status_since_ms: 0,
                joined_at_ms: 0,
            },
        );
        let id = WorkerId { node: 7, slot: 1 };
        s.workers.insert(
            id,
            WorkerInfo {
                role: WorkerRole::Aggregated,
                state: WorkerState::Active,
                model: "m".into(),
                kv_blocks_total: 512,
                device: "cuda:1".into(),
            },
        );
        for r in ["a", "b"] {
            s.leases.insert(
                r.into(),
                Lease {
                    owner: id,
                    epoch: 1,
                    frontend: 3,
                    granted_at_ms: 0,
                },
            );
        }
        s.apply(&Command::ChangeWorkerRole {
            id,
            role: WorkerRole::Prefill,
            at_ms: 1,
        })
        .unwrap();
        let views = worker_views(&s);
        assert_eq!(views.len(), 1);
        let v = &views[0];
        assert_eq!(v.id, "7/1");
        assert_eq!(
            (v.role.as_str(), v.state.as_str(), v.pending_role.as_deref()),
            ("aggregated", "draining", Some("prefill"))
        );
        assert_eq!(
            (v.node_addr.as_str(), v.node_status.as_str()),
            ("10.0.0.7:8000", "down")
        );
        assert_eq!((v.kv_blocks_total, v.leases_held), (512, 2));
    }
}
