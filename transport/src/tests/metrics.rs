//! The metric names and labels operators' dashboards rely on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

use super::{pair, Echo, Fail};

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

/// Records every metric under `name{label=value,...}` (labels sorted).
#[derive(Default)]
struct Captured {
    values: Mutex<HashMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<String, Arc<Samples>>>,
}

fn key_text(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Captured {
    fn value(&self, key: &str) -> u64 {
        self.values
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |v| v.load(Ordering::SeqCst))
    }

    fn samples(&self, key: &str) -> usize {
        self.histograms
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |h| h.0.lock().unwrap().len())
    }
}

impl Recorder for Captured {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(
            self.values
                .lock()
                .unwrap()
                .entry(key_text(key))
                .or_default()
                .clone(),
        )
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(
            self.values
                .lock()
                .unwrap()
                .entry(key_text(key))
                .or_default()
                .clone(),
        )
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(
            self.histograms
                .lock()
                .unwrap()
                .entry(key_text(key))
                .or_default()
                .clone(),
        )
    }
}

#[test]
fn calls_are_counted_per_peer_method_and_error_kind() {
    let captured = Captured::default();
    // A current-thread runtime keeps every task on this thread, under the local recorder.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&captured, || {
        runtime.block_on(async {
            let p = pair();
            let addr = p.b.local_addr();
            p.a.call::<Echo>(addr, &"x".repeat(1000)).await.unwrap();
            p.a.call::<Fail>(addr, &"no".into()).await.unwrap_err();
            let connections = f64::from_bits(captured.value("stator_transport_connections{}"));
            assert_eq!(connections, 2.0, "A's outgoing and B's incoming connection");
        })
    });
    // A sent to node 2 and B to node 1: the peer label is the node id.
    assert!(captured.value("stator_transport_bytes_sent_total{peer=2}") > 1000);
    assert!(captured.value("stator_transport_bytes_received_total{peer=1}") > 1000);
    assert!(captured.value("stator_transport_bytes_sent_total{peer=1}") > 0);
    assert_eq!(
        captured.value("stator_transport_streams_total{direction=outbound}"),
        2
    );
    assert_eq!(
        captured.value("stator_transport_streams_total{direction=inbound}"),
        2
    );
    assert_eq!(
        captured.samples("stator_transport_rpc_seconds{method=test.echo}"),
        1
    );
    assert_eq!(
        captured.samples("stator_transport_rpc_seconds{method=test.fail}"),
        1
    );
    assert_eq!(
        captured.value("stator_transport_rpc_errors_total{kind=remote,method=test.fail}"),
        1
    );
    assert_eq!(
        captured.value("stator_transport_rpc_errors_total{kind=remote,method=test.echo}"),
        0
    );
}
