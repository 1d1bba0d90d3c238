#!/usr/bin/env bash
# The one-writer ceiling of issue 2's target: how many replicated writes/s one writer could get
# through a 3-peer stator cluster on this machine if stator's Raft path cost nothing beyond
# its own single-machine write and the QUIC round trips that replication cannot skip.
#   1. one member of each system, no replication   (stator-clusterbench --members 1)
#   2. three members of each, as in bench/cluster/run.sh, one writer
#   3. the QUIC request/response round trip, one caller (transport's rpc_bench example)
# then ceiling = 1 / (one-member write time + 5/3 x round trip): a write taken by the leader
# waits at least one round trip to a follower beyond the one-member path (the follower's flush
# overlaps the leader's own), and the two writes in three that reach a follower first add the
# forward's round trip. Prints the table and writes bench/results/cluster-floor/ceiling.json.
# Usage: bench/cluster/floor.sh [windows per measurement, default 15]
set -euo pipefail
cd "$(dirname "$0")/../.."
windows=${1:-15}
out=bench/results/cluster-floor

cargo build --release -p stator --bin stator
cargo build --release -p stator-tools --bin stator-clusterbench
cargo build --release -p stator-transport --example rpc_bench

for members in 1 3; do
    target/release/stator-clusterbench --members "$members" --trials 0 --writers 1 \
        --windows "$windows" --out "$out/members-$members"
done
target/release/examples/rpc_bench 10000 floor

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def writes(members, system):
    figures = json.load(open(f"{out}/members-{members}/cluster-writes.json"))["figures"]
    return next(f["throughput"]["p50"] for f in figures if f["system"] == system and f["writers"] == 1)
rtt_us = next(r["p50_us"] for r in json.load(open("bench/results/rpc-bench-floor.json"))
              if r["exchange"] == "call" and r["callers"] == 1)
one = {s: writes(1, s) for s in ("stator", "etcd")}
three = {s: writes(3, s) for s in ("stator", "etcd")}
one_member_us = 1e6 / one["stator"]
ceiling_us = one_member_us + rtt_us * 5 / 3
ceiling = 1e6 / ceiling_us
result = {
    "writes_per_s_one_member": one,
    "writes_per_s_three_members": three,
    "quic_round_trip_p50_us": rtt_us,
    "stator_one_member_write_us": one_member_us,
    "stator_ceiling_write_us": ceiling_us,
    "stator_ceiling_writes_per_s": ceiling,
    "ceiling_vs_etcd": ceiling / three["etcd"],
    "measured_vs_etcd": three["stator"] / three["etcd"],
    "target_vs_etcd": 2.0,
}
json.dump(result, open(f"{out}/ceiling.json", "w"), indent=2)
print(f"{'':34}{'stator':>10}{'etcd':>10}")
print(f"{'one member, writes/s (p50)':34}{one['stator']:>10.0f}{one['etcd']:>10.0f}")
print(f"{'three members, writes/s (p50)':34}{three['stator']:>10.0f}{three['etcd']:>10.0f}")
print(f"QUIC round trip p50: {rtt_us:.1f} us")
print(f"ceiling: {one_member_us:.0f} + 5/3 x {rtt_us:.1f} = {ceiling_us:.0f} us per write "
      f"= {ceiling:.0f} writes/s = {ceiling / three['etcd']:.2f}x etcd "
      f"(measured {three['stator'] / three['etcd']:.2f}x, target 2x)")
PY
