//! A metrics recorder that keeps every value, for tests that check what was recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

/// Records every metric under `name{label=value,...}` (labels sorted).
#[derive(Default)]
pub(crate) struct Captured {
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
    /// The value behind a counter or gauge (a gauge keeps its f64's bits).
    fn cell(&self, key: &Key) -> Arc<AtomicU64> {
        self.values
            .lock()
            .unwrap()
            .entry(key_text(key))
            .or_default()
            .clone()
    }

    pub(crate) fn value(&self, key: &str) -> u64 {
        self.values
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |v| v.load(Ordering::SeqCst))
    }

    pub(crate) fn samples(&self, key: &str) -> usize {
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
        Counter::from_arc(self.cell(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
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

/// Runs `test` on a current-thread runtime, so that every task stays on this thread under
/// `captured` as the local recorder.
pub(crate) fn run_recorded<F: std::future::Future>(captured: &Captured, test: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(captured, || runtime.block_on(test))
}
