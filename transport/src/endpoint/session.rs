//! The client side of RPC sessions: a stream per (peer, method) that stays open and carries
//! one call after another (`StreamOpen::Session`), so that a call costs one frame each way
//! instead of opening, accepting and finishing a stream, and spawning a server task, every
//! time (`transport/examples/rpc_bench.rs`: about 20% less CPU per sequential call, 40% less
//! with 16 concurrent callers).
//!
//! A session is used by one call at a time and goes back to the idle set only after a whole
//! response was read. A call that fails or is dropped midway (deadline, `select!`) drops its
//! stream with it, so no later call can read an answer meant for another. Idle sessions are
//! reused only within [`CLIENT_IDLE_LIMIT`], well inside the server's [`SERVER_IDLE_LIMIT`],
//! so a reused session is never one the server is closing: a request sent on a session is
//! never lost to an idle close, and the caller never needs to guess whether to resend it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quinn::{RecvStream, SendStream};

use super::call::read_response;
use super::open_with;
use crate::error::RpcError;
use crate::frame::write_frame;
use crate::metrics;
use crate::wire::StreamOpen;

/// A caller reuses a session only if it has been idle for less than this.
pub(crate) const CLIENT_IDLE_LIMIT: Duration = Duration::from_secs(2);
/// The server ends a session that carried no request for this long (the caller has
/// stopped reusing it long before).
pub(crate) const SERVER_IDLE_LIMIT: Duration = Duration::from_secs(20);
/// Idle sessions kept per (peer, method); more concurrent calls open more, and the extra
/// ones are finished when they come back.
const MAX_IDLE_PER_METHOD: usize = 8;

struct Session {
    send: SendStream,
    recv: RecvStream,
}

struct Idle {
    /// `stable_id` of the connection the sessions belong to.
    connection: usize,
    sessions: Vec<(Session, Instant)>,
}

pub(crate) struct Sessions {
    idle: parking_lot::Mutex<IdleSessions>,
}

struct IdleSessions {
    by_method: HashMap<(SocketAddr, &'static str), Idle>,
    /// When stale sessions of every peer and method were last dropped.
    swept: Instant,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            idle: parking_lot::Mutex::new(IdleSessions {
                by_method: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }
}

impl IdleSessions {
    /// Drops the sessions no caller will reuse any more, with the entries they leave empty:
    /// a stream keeps its connection's state alive, so those of peers that are gone or no
    /// longer called would otherwise stay until that same (peer, method) is called again.
    fn sweep(&mut self) {
        self.swept = Instant::now();
        self.by_method.retain(|_, entry| {
            entry
                .sessions
                .retain(|(_, since)| since.elapsed() < CLIENT_IDLE_LIMIT);
            !entry.sessions.is_empty()
        });
    }
}

impl Sessions {
    fn take(&self, addr: SocketAddr, method: &'static str, connection: usize) -> Option<Session> {
        let mut idle = self.idle.lock();
        let entry = idle.by_method.get_mut(&(addr, method))?;
        if entry.connection != connection {
            // The connection was replaced; its sessions died with it.
            entry.connection = connection;
            entry.sessions.clear();
            return None;
        }
        while let Some((session, since)) = entry.sessions.pop() {
            if since.elapsed() < CLIENT_IDLE_LIMIT {
                return Some(session);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, method: &'static str, connection: usize, session: Session) {
        let mut idle = self.idle.lock();
        if idle.swept.elapsed() >= CLIENT_IDLE_LIMIT {
            idle.sweep();
        }
        let entry = idle
            .by_method
            .entry((addr, method))
            .or_insert_with(|| Idle {
                connection,
                sessions: Vec::new(),
            });
        if entry.connection != connection {
            entry.connection = connection;
            entry.sessions.clear();
        }
        // Stale ones first out: they would only be skipped later.
        entry
            .sessions
            .retain(|(_, since)| since.elapsed() < CLIENT_IDLE_LIMIT);
        if entry.sessions.len() < MAX_IDLE_PER_METHOD {
            entry.sessions.push((session, Instant::now()));
        }
        // Else the session drops here: its stream finishes and the server's task ends.
    }

    pub(crate) fn clear(&self) {
        self.idle.lock().by_method.clear();
    }

    /// (peer, method) pairs with idle sessions kept.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.idle.lock().by_method.len()
    }
}

/// Sends one request for `method` on a session of `conn` (reused or new) and reads the
/// response. No deadline of its own: callers wrap it in theirs.
pub(crate) async fn call_in_session(
    sessions: &Sessions,
    conn: &quinn::Connection,
    addr: SocketAddr,
    method: &'static str,
    payload: &[u8],
    max_frame_bytes: usize,
    peer_label: &str,
) -> Result<Vec<u8>, RpcError> {
    if payload.len() > max_frame_bytes {
        return Err(RpcError::FrameTooLarge {
            size: payload.len(),
            max: max_frame_bytes,
        });
    }
    let connection = conn.stable_id();
    let mut session = match sessions.take(addr, method, connection) {
        Some(session) => session,
        None => open(conn, method, max_frame_bytes, peer_label).await?,
    };
    let written = write_frame(&mut session.send, payload, max_frame_bytes).await;
    let written_ok = written.is_ok();
    if written_ok {
        metrics::bytes_sent(peer_label, payload.len() + 4);
    }
    // As in a one-off call: a server that refused the session says why in a response frame.
    let result = read_response(&mut session.recv, written, max_frame_bytes, peer_label).await;
    // A handler's own error leaves the session as good as a success; any other error (a
    // refused session, a request the server could not read) may have ended it.
    if written_ok && matches!(result, Ok(_) | Err(RpcError::Remote(_))) {
        sessions.put(addr, method, connection, session);
    }
    result
}

async fn open(
    conn: &quinn::Connection,
    method: &'static str,
    max_frame_bytes: usize,
    peer_label: &str,
) -> Result<Session, RpcError> {
    let opening = StreamOpen::Session {
        method: method.to_owned(),
    };
    let (send, recv) = open_with(conn, &opening, max_frame_bytes, peer_label).await?;
    Ok(Session { send, recv })
}
