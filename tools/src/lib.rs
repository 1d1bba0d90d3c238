//! `stator-bench`: a load generator for OpenAI-compatible LLM servers that reports the figures
//! serving engineers compare (TTFT, ITL, TPOT, latency, throughput, goodput).
//!
//! Pure parts (schedules, traces, prompts, statistics, report rendering) are plain functions
//! tested without a network; `runner` and `client` do the I/O.

pub mod bench;
pub mod cli;
pub mod client;
pub mod plot;
pub mod progress;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod stats;
pub mod workload;
