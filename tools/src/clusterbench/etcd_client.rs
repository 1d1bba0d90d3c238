//! A unary gRPC client for etcd over HTTP/2 cleartext (prior knowledge), one multiplexed
//! connection per member.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{HeaderMap, Request, StatusCode};

use super::h2::{H2Connection, H2Error};
use super::wire::{self, WireError};

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error(transparent)]
    H2(#[from] H2Error),
    #[error("cannot build request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("HTTP status {0}")]
    HttpStatus(StatusCode),
    #[error("grpc-status {code}: {message}")]
    Status { code: String, message: String },
    #[error("response has no grpc-status")]
    NoStatus,
    #[error("malformed response: {0}")]
    Wire(#[from] WireError),
}

/// One etcd member's client URL, on one HTTP/2 connection; clones share the connection.
#[derive(Clone)]
pub struct EtcdConnection {
    link: H2Connection,
}

impl EtcdConnection {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, GrpcError> {
        Ok(Self {
            link: H2Connection::connect(addr, timeout).await?,
        })
    }

    pub async fn put(&self, key: &[u8], value: &[u8], timeout: Duration) -> Result<(), GrpcError> {
        self.unary(
            "/etcdserverpb.KV/Put",
            wire::put_request(key, value),
            timeout,
        )
        .await
        .map(drop)
    }

    /// A linearizable get; succeeds only when the member is connected to a working leader.
    pub async fn get(&self, key: &[u8], timeout: Duration) -> Result<(), GrpcError> {
        self.unary("/etcdserverpb.KV/Range", wire::range_request(key), timeout)
            .await
            .map(drop)
    }

    /// (this member's id, the leader it knows of).
    pub async fn status(&self, timeout: Duration) -> Result<(Option<u64>, Option<u64>), GrpcError> {
        let message = self
            .unary("/etcdserverpb.Maintenance/Status", Bytes::new(), timeout)
            .await?;
        Ok(wire::status_member_and_leader(&message)?)
    }

    async fn unary(
        &self,
        path: &str,
        message: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, GrpcError> {
        tokio::time::timeout(timeout, self.unary_unbounded(path, message))
            .await
            .map_err(|_| GrpcError::H2(H2Error::Timeout(timeout)))?
    }

    async fn unary_unbounded(&self, path: &str, message: Bytes) -> Result<Bytes, GrpcError> {
        let request = Request::post(format!("{}{path}", self.link.base()))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(wire::grpc_frame(&message)))?;
        let response = self.link.send(request).await?;
        if response.status() != StatusCode::OK {
            return Err(GrpcError::HttpStatus(response.status()));
        }
        // Errors usually come trailers-only: the status sits in the headers.
        if let Some(result) = grpc_status(response.headers()) {
            result?;
        }
        let collected = response.into_body();
        let trailers_status = collected.trailers().and_then(grpc_status);
        let body = collected.to_bytes();
        trailers_status.ok_or(GrpcError::NoStatus)??;
        Ok(Bytes::copy_from_slice(wire::grpc_unframe(&body)?))
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<Result<(), GrpcError>> {
    let code = headers.get("grpc-status")?.to_str().unwrap_or("?");
    if code == "0" {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Some(Err(GrpcError::Status {
        code: code.to_string(),
        message,
    }))
}
