//! The frontend's view of one request's token stream across owners: forwards each token index
//! exactly once, drops tokens from stale epochs.

/// Outcome of offering one token to the reconciler.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// New token: forward it to the client.
    Forward,
    /// Already forwarded (a resumed owner replays nothing, but a duplicate can still arrive).
    Duplicate,
    /// From an owner that no longer holds the lease.
    Stale,
    /// Skips ahead of what has been forwarded: the stream is broken, resume from `next_index`.
    Gap,
}

#[derive(Debug, Clone)]
pub struct StreamReconciler {
    epoch: u64,
    next_index: usize,
}

impl StreamReconciler {
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch,
            next_index: 0,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Index of the next token the client has not seen.
    pub fn next_index(&self) -> usize {
        self.next_index
    }

    /// The lease moved: only tokens of `epoch` or later count from now on.
    pub fn advance_epoch(&mut self, epoch: u64) {
        self.epoch = self.epoch.max(epoch);
    }

    pub fn offer(&mut self, epoch: u64, index: usize) -> Offer {
        if epoch < self.epoch {
            return Offer::Stale;
        }
        self.epoch = epoch;
        match index.cmp(&self.next_index) {
            std::cmp::Ordering::Less => Offer::Duplicate,
            std::cmp::Ordering::Greater => Offer::Gap,
            std::cmp::Ordering::Equal => {
                self.next_index += 1;
                Offer::Forward
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_index_is_forwarded_once_and_stale_epochs_are_dropped() {
        let mut s = StreamReconciler::new(1);
        assert_eq!(s.offer(1, 0), Offer::Forward);
        assert_eq!(s.offer(1, 1), Offer::Forward);
        assert_eq!(s.offer(1, 1), Offer::Duplicate);
        s.advance_epoch(2);
        assert_eq!(s.offer(1, 2), Offer::Stale, "old owner's late token");
        assert_eq!(s.offer(2, 2), Offer::Forward);
        assert_eq!(s.offer(2, 4), Offer::Gap);
        assert_eq!(s.next_index(), 3);
    }
}
