//! Stop strings over streamed text.

/// What to send after a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text safe to emit now.
    pub emit: String,
    /// A stop string matched; nothing after it will be emitted.
    pub stopped: bool,
}

/// Finds stop strings in text that arrives in pieces.
///
/// Text that could be the start of a stop string is held back until the next delta decides
/// it; the stop string itself and everything after it are never emitted.
#[derive(Clone, Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            stopped: false,
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome {
                emit: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(delta);
        let first_match = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_match {
            self.held.truncate(at);
            self.stopped = true;
            return StopOutcome {
                emit: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        let keep = self.partial_match_len();
        let emit_len = self.held.len() - keep;
        let emit = self.held[..emit_len].to_string();
        self.held.drain(..emit_len);
        StopOutcome {
            emit,
            stopped: false,
        }
    }

    /// The held-back text, when the stream ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest tail of `held` that is a proper prefix of some stop string.
    fn partial_match_len(&self) -> usize {
        let held = self.held.as_str();
        held.char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .map(|i| held.len() - i)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            let o = m.push(d);
            out.push_str(&o.emit);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_deltas_is_caught_and_cut() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D and more"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn false_partial_match_is_released() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc EN").emit, "abc ");
        assert_eq!(m.push("x").emit, "ENx");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_later_pushes_emit_nothing() {
        let mut m = StopMatcher::new(vec!["world".into(), "lo w".into()]);
        let o = m.push("hello world");
        assert_eq!(
            o,
            StopOutcome {
                emit: "hel".into(),
                stopped: true
            }
        );
        assert!(m.push("more").stopped && m.push("more").emit.is_empty());
    }

    #[test]
    fn no_stops_passes_everything_through_and_unicode_is_not_split() {
        assert_eq!(run(&[], &["a", "é", ""]), ("aé".into(), false));
        assert_eq!(run(&["", "éx"], &["café", "!"]), ("café!".into(), false));
        assert_eq!(run(&["🙂!"], &["ok 🙂", "!"]), ("ok ".into(), true));
    }

    #[test]
    fn held_text_is_flushed_at_finish() {
        assert_eq!(run(&["</s>"], &["answer </"]), ("answer </".into(), false));
    }
}
