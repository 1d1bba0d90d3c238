//! The events of a failover as the peers log them (info level, RFC 3339 UTC timestamps): the
//! leader's failure-detector transitions and lease reassignments, the frontend's migrations.
//! Pure: parsed from log text.

use serde::Serialize;

/// Seconds since the Unix epoch, the clock the peers' log timestamps use.
pub fn unix_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The frontend resumed a request on another worker.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Migration {
    pub at_s: f64,
    /// The lease id: `<frontend node>/<sequence>/<API request id>`.
    pub lease: String,
    pub reason: String,
    pub epoch: u64,
    /// Tokens the client already had, which the new owner prefills with the prompt.
    pub delivered: u64,
}

impl Migration {
    pub fn is_for(&self, api_request_id: &str) -> bool {
        self.lease
            .rsplit_once('/')
            .is_some_and(|(_, id)| id == api_request_id)
    }
}

/// The leader's failure detector changed a node's status.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    pub at_s: f64,
    pub node: u64,
    pub to: String,
    pub silent_ms: Option<u64>,
}

/// The leader put a dead node's leases into the entry that marks it down.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reassignment {
    pub at_s: f64,
    pub node: u64,
    pub leases: u64,
}

fn timestamp_s(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let parsed = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
    Some(parsed.timestamp_micros() as f64 / 1e6)
}

/// The value of ` key=` (the last one on the line), without quotes.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let marker = format!(" {key}=");
    let start = line.rfind(&marker)? + marker.len();
    let rest = &line[start..];
    let value = rest.split(' ').next()?;
    Some(value.trim_matches('"'))
}

pub fn migrations(log: &str) -> Vec<Migration> {
    log.lines()
        .filter(|l| l.contains(" migrating request "))
        .filter_map(|l| {
            Some(Migration {
                at_s: timestamp_s(l)?,
                lease: field(l, "request")?.to_string(),
                reason: field(l, "reason")?.to_string(),
                epoch: field(l, "epoch")?.parse().ok()?,
                delivered: field(l, "delivered")?.parse().ok()?,
            })
        })
        .collect()
}

pub fn transitions(log: &str) -> Vec<Transition> {
    log.lines()
        .filter(|l| l.contains(" failure detector transition "))
        .filter_map(|l| {
            Some(Transition {
                at_s: timestamp_s(l)?,
                node: field(l, "node")?.parse().ok()?,
                to: field(l, "to")?.to_ascii_lowercase(),
                silent_ms: field(l, "silent_ms").and_then(|v| v.parse().ok()),
            })
        })
        .collect()
}

pub fn reassignments(log: &str) -> Vec<Reassignment> {
    log.lines()
        .filter(|l| l.contains(" reassigning the leases of a dead peer "))
        .filter_map(|l| {
            Some(Reassignment {
                at_s: timestamp_s(l)?,
                node: field(l, "node")?.parse().ok()?,
                leases: field(l, "leases")?.parse().ok()?,
            })
        })
        .collect()
}

/// How many times the peer logged that its worker registered (once per start).
pub fn worker_registrations(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(" worker registered"))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-11-25T04:20:00.250000Z  INFO failure detector transition node=3 to=Down silent_ms=312
2026-11-25T04:20:00.250100Z  INFO reassigning the leases of a dead peer node=3 leases=2
2026-11-25T04:20:00.400000Z  INFO migrating request request=1/7/cmpl-ab12 reason=\"reassigned\" detail=lease moved to 2/0 at epoch 2 to=2/0 epoch=2 delivered=12
2026-11-25T04:20:00.500000Z  WARN something else entirely delivered=99
2026-11-25T04:20:01.000000Z  INFO worker registered worker=3/0 role=Aggregated model=m
garbage line without a timestamp migrating request request=x reason=y epoch=1 delivered=1
";

    #[test]
    fn migrations_are_read_with_their_time_lease_and_progress() {
        let found = migrations(LOG);
        assert_eq!(found.len(), 1, "{found:?}");
        let m = &found[0];
        assert!((m.at_s - 1_795_580_400.4).abs() < 1e-6, "{}", m.at_s);
        assert_eq!(m.lease, "1/7/cmpl-ab12");
        assert_eq!(m.reason, "reassigned");
        assert_eq!(m.epoch, 2, "the field, not the words of the detail");
        assert_eq!(m.delivered, 12);
        assert!(m.is_for("cmpl-ab12"));
        assert!(!m.is_for("cmpl-ab1"));
        assert!(!m.is_for("7/cmpl-ab12"));
    }

    #[test]
    fn leader_events_are_read() {
        assert_eq!(
            transitions(LOG),
            vec![Transition {
                at_s: 1_795_580_400.25,
                node: 3,
                to: "down".into(),
                silent_ms: Some(312)
            }]
        );
        let moved = reassignments(LOG);
        assert_eq!(moved.len(), 1);
        assert_eq!((moved[0].node, moved[0].leases), (3, 2));
        assert_eq!(worker_registrations(LOG), 1);
    }
}
