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

pub(super) type FlushFn = Arc<dyn Fn(&sled::Tree) -> io::Result<()> + Send + Sync>;

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

    /// With a flush of the caller's (tests hold flushes back with it).
    pub(super) fn start_with(flush: FlushFn) -> io::Result<Self> {
        let (requests, pending) = mpsc::channel();
        let thread_flush = flush.clone();
        thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_until_closed(&pending, &*thread_flush))?;
        Ok(Self { requests, flush })
    }

    /// Makes everything inserted into `tree` so far durable, on the calling thread.
    pub(super) fn flush_now(&self, tree: &sled::Tree) -> io::Result<()> {
        (self.flush)(tree)
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
            (pending.done)(self.flush_now(&pending.tree));
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

pub(super) fn flush_sled(tree: &sled::Tree) -> io::Result<()> {
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
    use std::time::{Duration, Instant};

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    /// A flusher whose flushes each wait for the test's go-ahead (and their result), and
    /// which records completions as (append id, ok).
    struct Harness {
        _dir: tempfile::TempDir,
        tree: sled::Tree,
        flusher: Flusher,
        started: mpsc::Receiver<()>,
        release: mpsc::Sender<io::Result<()>>,
        done: Arc<Mutex<Vec<(u32, bool)>>>,
    }

    impl Harness {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let tree = sled::open(dir.path())
                .and_then(|db| db.open_tree("log"))
                .expect("sled tree");
            let (started_tx, started) = mpsc::channel();
            let (release, release_rx) = mpsc::channel::<io::Result<()>>();
            let release_rx = Mutex::new(release_rx);
            let flush: FlushFn = Arc::new(move |_tree: &sled::Tree| {
                started_tx.send(()).expect("test alive");
                release_rx
                    .lock()
                    .expect("lock")
                    .recv_timeout(WAIT)
                    .expect("released")
            });
            Self {
                _dir: dir,
                tree,
                flusher: Flusher::start_with(flush).expect("flusher"),
                started,
                release,
                done: Arc::new(Mutex::new(Vec::new())),
            }
        }

        fn append(&self, id: u32) {
            let done = self.done.clone();
            let completion: Completion =
                Box::new(move |result| done.lock().expect("lock").push((id, result.is_ok())));
            self.flusher.flush_then(&self.tree, completion);
        }

        fn flush_started(&self) {
            self.started.recv_timeout(WAIT).expect("a flush starts");
        }

        fn finish_flush(&self, result: io::Result<()>) {
            self.release.send(result).expect("flusher alive");
        }

        fn completions_after(&self, settle: Duration) -> Vec<(u32, bool)> {
            std::thread::sleep(settle);
            self.done.lock().expect("lock").clone()
        }

        fn wait_for_completions(&self, count: usize) -> Vec<(u32, bool)> {
            let deadline = Instant::now() + WAIT;
            while self.done.lock().expect("lock").len() < count && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.done.lock().expect("lock").clone()
        }
    }

    #[test]
    fn completes_only_after_the_flush_and_groups_what_queued_meanwhile() {
        let h = Harness::new();
        h.append(1);
        h.flush_started();
        // Queued while the first flush is in progress: they wait for a second one.
        h.append(2);
        h.append(3);
        let settle = Duration::from_millis(50);
        assert_eq!(
            h.completions_after(settle),
            vec![],
            "completed before its flush ended"
        );

        h.finish_flush(Ok(()));
        h.flush_started();
        assert_eq!(h.completions_after(settle), vec![(1, true)]);

        h.finish_flush(Ok(()));
        assert_eq!(
            h.wait_for_completions(3),
            vec![(1, true), (2, true), (3, true)]
        );
        assert!(
            h.started.try_recv().is_err(),
            "three appends took more than two flushes"
        );
    }

    #[test]
    fn a_failed_flush_fails_every_append_it_covered_and_no_other() {
        let h = Harness::new();
        h.append(1);
        h.flush_started();
        h.append(2);
        h.append(3);
        h.finish_flush(Ok(()));
        h.flush_started();
        h.finish_flush(Err(io::Error::other("disk full")));
        assert_eq!(
            h.wait_for_completions(3),
            vec![(1, true), (2, false), (3, false)]
        );
    }
}
