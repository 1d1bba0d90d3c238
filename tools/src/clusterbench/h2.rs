//! One HTTP/2 cleartext connection (prior knowledge) to one member, shared by every writer:
//! the transport both systems' write clients use, so that neither pays for more connections
//! or system calls than the other.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP/2 transport: {0}")]
    Transport(#[from] hyper::Error),
}

/// Clones share the connection.
#[derive(Clone)]
pub struct H2Connection {
    base: String,
    sender: SendRequest<Full<Bytes>>,
}

impl H2Connection {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, H2Error> {
        let failed = |reason: String| H2Error::Connect { addr, reason };
        let handshake = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| failed(e.to_string()))?;
            tcp.set_nodelay(true).map_err(|e| failed(e.to_string()))?;
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| failed(e.to_string()))
        };
        let (sender, connection) = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| H2Error::Timeout(timeout))??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 connection closed");
            }
        });
        Ok(Self {
            base: format!("http://{addr}"),
            sender,
        })
    }

    /// `http://host:port`, to put in front of a request's path.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `request` and collects the whole response (body and trailers).
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<http_body_util::Collected<Bytes>>, H2Error> {
        let mut sender = self.sender.clone();
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await?;
        Ok(Response::from_parts(parts, collected))
    }
}
