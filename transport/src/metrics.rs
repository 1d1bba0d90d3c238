//! The transport's metrics (names `stator_transport_*`).

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::error::RpcError;

pub(crate) fn bytes_sent(peer: &str, bytes: usize) {
    counter!("stator_transport_bytes_sent_total", "peer" => peer.to_owned())
        .increment(bytes as u64);
}

pub(crate) fn bytes_received(peer: &str, bytes: usize) {
    counter!("stator_transport_bytes_received_total", "peer" => peer.to_owned())
        .increment(bytes as u64);
}

#[derive(Clone, Copy)]
pub(crate) enum Direction {
    Inbound,
    Outbound,
}

pub(crate) fn stream_opened(direction: Direction) {
    let direction = match direction {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    };
    counter!("stator_transport_streams_total", "direction" => direction).increment(1);
}

pub(crate) fn rpc_finished(method: &'static str, elapsed: Duration, result: Result<(), &RpcError>) {
    histogram!("stator_transport_rpc_seconds", "method" => method).record(elapsed.as_secs_f64());
    if let Err(err) = result {
        counter!("stator_transport_rpc_errors_total", "method" => method, "kind" => err.kind())
            .increment(1);
    }
}

pub(crate) fn datagram_dropped() {
    counter!("stator_transport_datagrams_dropped_total").increment(1);
}

/// Counts `conn` in `stator_transport_connections` until it closes.
pub(crate) fn track_connection(conn: &quinn::Connection) {
    let gauge = gauge!("stator_transport_connections");
    gauge.increment(1.0);
    let conn = conn.clone();
    tokio::spawn(async move {
        conn.closed().await;
        gauge.decrement(1.0);
    });
}

/// A pooled connection closed because the peer sent nothing during a whole call.
pub(crate) fn connection_unresponsive() {
    counter!("stator_transport_unresponsive_closes_total").increment(1);
}
