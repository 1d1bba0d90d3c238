//! Closed-loop replicated writes: N writers, each with one write in flight at a time, spread
//! round-robin over the members.

use std::time::{Duration, Instant};

use futures::future::join_all;

use super::figures::Completion;
use super::target::KvClient;

/// 16-byte keys over a bounded key space, so state size stays flat during a long run.
pub const KEY_SPACE: u64 = 4096;

pub fn key_for(sequence: u64) -> String {
    format!("bench-key-{:06}", sequence % KEY_SPACE)
}

/// 64-byte values.
pub fn value_for(sequence: u64) -> String {
    format!("{sequence:064}")
}

/// Runs `writers` writers for `duration`; completion times are seconds after the start.
pub async fn closed_loop(client: &KvClient, writers: usize, duration: Duration, timeout: Duration) -> Vec<Completion> {
    let start = Instant::now();
    let members = client.member_count();
    let per_writer = (0..writers).map(|writer| async move {
        let mut done = Vec::new();
        let mut sequence = writer as u64;
        while start.elapsed() < duration {
            let sent = Instant::now();
            let result = client
                .put(writer % members, &key_for(sequence), &value_for(sequence), timeout)
                .await;
            let finished = Instant::now();
            done.push(Completion {
                end_s: finished.duration_since(start).as_secs_f64(),
                latency_ms: finished.duration_since(sent).as_secs_f64() * 1e3,
                ok: result.is_ok(),
            });
            if let Err(e) = result {
                tracing::debug!(writer, error = %e, "write failed");
                // A member that refuses at once must not turn this writer into a busy loop.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sequence += writers as u64;
        }
        done
    });
    join_all(per_writer).await.into_iter().flatten().collect()
}
