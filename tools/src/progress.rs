//! The progress bar on stderr; invisible when stderr is not a terminal or when disabled.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    errors: Arc<AtomicU64>,
}

impl Progress {
    /// `total` is the number of requests when known in advance.
    pub fn new(label: &str, total: Option<u64>, visible: bool) -> Self {
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {spinner} {pos} done {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Self {
            bar,
            errors: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn request_done(&self, ok: bool) {
        if !ok {
            let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
            self.bar.set_message(format!("errors: {errors}"));
        }
        self.bar.inc(1);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
