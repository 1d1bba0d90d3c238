#!/usr/bin/env bash
# Cluster-core benchmark (issue 2): 3-peer stator vs 3-member etcd on loopback.
# Builds --release, runs writes at 1/16/256 writers, 30 leader-failover trials per system and
# 30 stator failure-detection trials; writes bench/results/cluster-*.json and cluster-*.png.
# Usage: bench/cluster/run.sh [extra stator-clusterbench flags, e.g. --trials 10]
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v etcd >/dev/null 2>&1; then
    echo "installing Debian's etcd-server (3.4)" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update
    $SUDO apt-get install -y etcd-server
fi
etcd --version | head -1 >&2

cargo build --release -p stator --bin stator
cargo build --release -p stator-tools --bin stator-clusterbench

exec target/release/stator-clusterbench \
    --stator-bin target/release/stator \
    --etcd-bin "$(command -v etcd)" \
    --out bench/results \
    "$@"
