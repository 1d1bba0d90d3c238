//! The admin API under `/admin/v1`, behind the admin bearer token. `stator ctl` is its client.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use stator_raft::model::{Command, NodeStatus};
use tracing::info;

use crate::http::App;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/admin/v1/status", get(status))
        .route("/admin/v1/members", get(members))
        .route("/admin/v1/join-token", get(join_token))
        .route("/admin/v1/members/{id}/remove", post(remove))
        .route("/admin/v1/leave", post(leave))
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
    let out = app
        .raft
        .write(vec![Command::PutMeta {
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
        .write(vec![Command::DeleteMeta { key: key.clone() }])
        .await
        .map_err(unavailable)?;
    Ok(Json(serde_json::json!({"key": key, "index": out.index})))
}
