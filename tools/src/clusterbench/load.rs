//! Closed-loop replicated writes: N writers, each with one write in flight at a time; each
//! writer moves to the next member after every write, so that at any concurrency (one writer
//! included) the writes spread evenly over leader and followers, whichever member leads.

use std::time::{Duration, Instant};

use futures::future::join_all;

use super::figures::Completion;
use super::target::KvClient;

/// Distinct keys by default: bounded, so state size stays flat during a long run.
pub const DEFAULT_KEY_SPACE: u64 = 4096;

/// 16-byte keys; `key_space` (at most 1,000,000) distinct ones.
pub fn key_for(sequence: u64, key_space: u64) -> String {
    format!("bench-key-{:06}", sequence % key_space.clamp(1, 1_000_000))
}

/// 64-byte values.
pub fn value_for(sequence: u64) -> String {
    format!("{sequence:064}")
}

/// Runs `writers` writers for `duration`; completion times are seconds after the start.
pub async fn closed_loop(
    client: &KvClient,
    writers: usize,
    key_space: u64,
    duration: Duration,
    timeout: Duration,
) -> Vec<Completion> {
    let start = Instant::now();
    let members = client.member_count();
    let per_writer = (0..writers).map(|writer| async move {
        let mut done = Vec::new();
        let mut sequence = writer as u64;
        let mut member = writer % members;
        while start.elapsed() < duration {
            let sent = Instant::now();
            let result = client
                .put(
                    member,
                    &key_for(sequence, key_space),
                    &value_for(sequence),
                    timeout,
                )
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
            member = (member + 1) % members;
        }
        done
    });
    join_all(per_writer).await.into_iter().flatten().collect()
}

/// Writes every key once, so each measured level starts with the state at its full size.
pub async fn prefill(client: &KvClient, key_space: u64, timeout: Duration) -> Result<(), String> {
    const FILLERS: u64 = 16;
    let members = client.member_count();
    let fillers = (0..FILLERS).map(|filler| async move {
        let mut sequence = filler;
        while sequence < key_space {
            client
                .put(
                    filler as usize % members,
                    &key_for(sequence, key_space),
                    &value_for(sequence),
                    timeout,
                )
                .await
                .map_err(|e| format!("prefill of key {sequence}: {e}"))?;
            sequence += FILLERS;
        }
        Ok::<(), String>(())
    });
    join_all(fillers).await.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_have_the_sizes_both_systems_get() {
        for sequence in [0, 7, 4095, 4096, 123_456_789] {
            assert_eq!(key_for(sequence, DEFAULT_KEY_SPACE).len(), 16);
            assert_eq!(value_for(sequence).len(), 64);
        }
        assert_eq!(
            key_for(4096 + 5, 4096),
            key_for(5, 4096),
            "the key space is bounded"
        );
        let distinct: std::collections::BTreeSet<String> =
            (0..100).map(|s| key_for(s, 16)).collect();
        assert_eq!(distinct.len(), 16);
    }
}
