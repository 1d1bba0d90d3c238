use std::time::Duration;

use crate::error::TransportError;

/// Limits and deadlines of an [`crate::Endpoint`].
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest frame (request, response or stream frame) accepted or sent.
    pub max_frame_bytes: usize,
    /// Default deadline of a call; also the server's deadline for reading a request, running
    /// its handler, and writing the response, and the per-frame deadline of raw streams.
    pub rpc_timeout: Duration,
    /// Deadline of a QUIC + TLS handshake.
    pub connect_timeout: Duration,
    /// Keep-alive interval; keeps idle connections (and NAT bindings) open.
    pub keep_alive: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame_bytes: 16 * 1024 * 1024,
            rpc_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            // A peer that vanished without closing (SIGKILL, power loss) must not keep a dead
            // pooled connection around for long: Raft RPCs to it would time out until then.
            keep_alive: Duration::from_millis(250),
            idle_timeout: Duration::from_secs(2),
        }
    }
}

impl TransportConfig {
    pub(crate) fn validate(&self) -> Result<(), TransportError> {
        let invalid = |m: &str| Err(TransportError::InvalidConfig(m.to_string()));
        if self.max_frame_bytes == 0 || self.max_frame_bytes > u32::MAX as usize {
            return invalid("max_frame_bytes must be between 1 and 4 GiB");
        }
        if self.rpc_timeout.is_zero() || self.connect_timeout.is_zero() {
            return invalid("rpc_timeout and connect_timeout must be positive");
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return invalid("keep_alive must be positive and shorter than idle_timeout");
        }
        Ok(())
    }

    /// QUIC transport parameters derived from this configuration.
    pub(crate) fn quic(&self) -> Result<quinn::TransportConfig, TransportError> {
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|e| TransportError::InvalidConfig(format!("idle_timeout: {e}")))?;
        let mut quic = quinn::TransportConfig::default();
        quic.max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive))
            .max_concurrent_bidi_streams(1024u32.into())
            .max_concurrent_uni_streams(0u32.into())
            // Windows sized for bulk KV transfer at LAN round-trip times.
            .stream_receive_window((16u32 * 1024 * 1024).into())
            .receive_window((64u32 * 1024 * 1024).into())
            .send_window(64 * 1024 * 1024);
        Ok(quic)
    }
}
