#!/usr/bin/env bash
# Request-lease benchmarks (issue 5, benchmarks 1 and 3).
#   admissions: GrantLease + ReleaseLease through RaftNode::write on 3 in-process voters over
#               real QUIC with sled on disk; 1/16/256/1024 in flight, 30 one-second windows each.
#   failover:   4 stator peers with SmolLM2-135M (p0 --request-leases), 8 greedy streams per
#               trial, SIGKILL of a worker peer holding leases, 30 trials.
# Writes bench/results/lease-{admissions,failover}.json and lease-*-cdf.png, prints tables.
# Usage: bench/leases/run.sh [admissions|failover|all] [extra flags for that benchmark]
set -euo pipefail
cd "$(dirname "$0")/../.."

which="${1:-all}"
shift || true

if [ "$which" != admissions ] && [ "$which" != failover ] && [ "$which" != all ]; then
    echo "usage: $0 [admissions|failover|all] [flags for that benchmark]" >&2
    exit 2
fi
if [ "$which" = all ] && [ $# -gt 0 ]; then
    echo "extra flags need one benchmark: $0 admissions|failover FLAGS" >&2
    exit 2
fi
cargo build --release -p stator --bin stator
cargo build --release -p stator-tools --bin stator-leasebench

echo "machine: $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
if [ "$which" != failover ]; then
    target/release/stator-leasebench --out bench/results admissions "$@"
fi
if [ "$which" != admissions ]; then
    target/release/stator-leasebench --out bench/results failover \
        --stator-bin target/release/stator \
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf "$@"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
