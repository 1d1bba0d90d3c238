//! Group commit for the Raft log: one thread per store makes appended entries durable and
//! completes their callbacks in append order.
//!
//! Why a thread of its own: the leader's `RaftCore` (patched openraft, `vendor/openraft`) no
//! longer waits for its own appends to be flushed, so that replication to the followers runs
//! while the leader's flush is in progress. That only helps if `append` returns before the
//! flush, so the flush must happen elsewhere. Appends that arrive while a flush runs share the
//! next one.

use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

/// Called with the flush's result once the entries it covers are durable (or not).
pub(super) type Completion = Box<dyn FnOnce(io::Result<()>) + Send>;

type FlushFn = Arc<dyn Fn(&sled::Tree) -> io::Result<()> + Send + Sync>;

/// A flush request: the entries it covers are already inserted into `tree`.
struct Pending {
    /// Flushing any tree flushes the whole sled database. Carried per request rather than
    /// owned by the thread, so an idle flusher keeps no database open (a reopen of the same
    /// path in this process needs the old one gone).
    tree: sled::Tree,
    done: Completion,
}

pub(super) struct Flusher {
    requests: mpsc::Sender<Pending>,
    flush: FlushFn,
}

impl Flusher {
    pub(super) fn start() -> io::Result<Self> {
        Self::start_with(Arc::new(flush_sled))
    }

    fn start_with(flush: FlushFn) -> io::Result<Self> {
        let (requests, pending) = mpsc::channel();
        let thread_flush = flush.clone();
        thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_until_closed(&pending, &*thread_flush))?;
        Ok(Self { requests, flush })
    }

    /// Calls `done` once everything inserted into `tree` so far is durable.
    pub(super) fn flush_then(&self, tree: &sled::Tree, done: Completion) {
        let pending = Pending {
            tree: tree.clone(),
            done,
        };
        if let Err(mpsc::SendError(pending)) = self.requests.send(pending) {
            // Only if the thread died (a panic in a completion): flush here rather than lose
            // a completion.
            let result = (self.flush)(&pending.tree);
            (pending.done)(result);
        }
    }
}

fn flush_until_closed(
    pending: &mpsc::Receiver<Pending>,
    flush: &dyn Fn(&sled::Tree) -> io::Result<()>,
) {
    while let Ok(first) = pending.recv() {
        // Everything queued now was inserted before this flush starts, so one flush covers
        // the whole group.
        let group: Vec<Pending> = std::iter::once(first).chain(pending.try_iter()).collect();
        let result = flush(&group[0].tree);
        for request in group {
            (request.done)(copy_result(&result));
        }
    }
}

fn flush_sled(tree: &sled::Tree) -> io::Result<()> {
    tree.flush().map(|_| ()).map_err(io::Error::other)
}

fn copy_result(result: &io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    fn temp_tree() -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path()).expect("sled");
        let tree = db.open_tree("log").expect("tree");
        (dir, tree)
    }

    /// A flush that waits for the test's go-ahead and reports each start.
    fn gated() -> (FlushFn, mpsc::Receiver<()>, mpsc::Sender<io::Result<()>>) {
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<io::Result<()>>();
        let release_rx = Mutex::new(release_rx);
        let flush: FlushFn = Arc::new(move |_tree: &sled::Tree| {
            started_tx.send(()).expect("test alive");
            release_rx
                .lock()
                .expect("lock")
                .recv_timeout(Duration::from_secs(10))
                .expect("released")
        });
        (flush, started, release)
    }

    fn recorder(log: &Arc<Mutex<Vec<(u32, bool)>>>, id: u32) -> Completion {
        let log = log.clone();
        Box::new(move |result| log.lock().expect("lock").push((id, result.is_ok())))
    }

    #[test]
    fn completes_only_after_the_flush_and_groups_what_queued_meanwhile() {
        let (_dir, tree) = temp_tree();
        let (flush, started, release) = gated();
        let flusher = Flusher::start_with(flush).expect("flusher");
        let done = Arc::new(Mutex::new(Vec::new()));

        flusher.flush_then(&tree, recorder(&done, 1));
        started
            .recv_timeout(Duration::from_secs(5))
            .expect("first flush starts");
        // Queued while the first flush is in progress: they wait for a second one.
        flusher.flush_then(&tree, recorder(&done, 2));
        flusher.flush_then(&tree, recorder(&done, 3));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            done.lock().expect("lock").is_empty(),
            "completed before any flush ended"
        );

        release.send(Ok(())).expect("release first");
        started
            .recv_timeout(Duration::from_secs(5))
            .expect("second flush starts");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(*done.lock().expect("lock"), vec![(1, true)]);

        release.send(Ok(())).expect("release second");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while done.lock().expect("lock").len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            *done.lock().expect("lock"),
            vec![(1, true), (2, true), (3, true)]
        );
        // Two flushes served three appends.
        assert!(started.try_recv().is_err(), "a third flush ran");
    }

    #[test]
    fn a_failed_flush_fails_every_append_it_covered() {
        let (_dir, tree) = temp_tree();
        let (flush, started, release) = gated();
        let flusher = Flusher::start_with(flush).expect("flusher");
        let done = Arc::new(Mutex::new(Vec::new()));

        flusher.flush_then(&tree, recorder(&done, 1));
        started
            .recv_timeout(Duration::from_secs(5))
            .expect("flush starts");
        release
            .send(Err(io::Error::other("disk full")))
            .expect("release");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while done.lock().expect("lock").is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*done.lock().expect("lock"), vec![(1, false)]);
    }
}
