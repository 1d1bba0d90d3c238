//! Handler-level tests: real router, real tokenizer, a scripted in-test [`TokenSource`].

mod cancel;
mod chat;
mod completions;
mod engine;
mod errors;
mod metrics;
mod support;
