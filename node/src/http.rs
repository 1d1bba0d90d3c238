//! The peer's HTTP server: `/health`, `/metrics`, the admin API and the OpenAI API.

use std::sync::Arc;

use anyhow::Result;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use stator_raft::RaftNode;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin;
use crate::cluster::Health;

/// Everything the HTTP handlers share.
pub struct App {
    pub node_id: u64,
    pub cluster_id: String,
    /// Join token text, when this peer has it on disk.
    pub join_token: Option<String>,
    pub raft: Arc<RaftNode>,
    pub health: Arc<Health>,
    pub metrics: PrometheusHandle,
    pub admin_token: String,
    /// Set to true to stop the peer (admin `leave`).
    pub shutdown: watch::Sender<bool>,
}

pub async fn serve(
    listener: TcpListener,
    app: App,
    api: Router,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let app = Arc::new(app);
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(app.clone())
        .merge(admin::router(app))
        .merge(api);
    let stop = async move {
        tokio::select! {
            _ = wait_for_signal() => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    };
    // Token streams are many small writes: without TCP_NODELAY the first chunk after the
    // response headers waits for the client's delayed ACK (~40 ms on Linux) — Nagle.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await?;
    Ok(())
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match app.health.check(&app.raft) {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "ok", "node_id": app.node_id}))).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unavailable", "reason": reason, "node_id": app.node_id})),
        )
            .into_response(),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
