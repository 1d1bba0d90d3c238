#!/usr/bin/env bash
# Issue 5, benchmark 2: the router's decision time, and the latency the frontend adds.
#
# 1. Router decision time: 64 workers, >= 100k indexed blocks, prompts of 1-4k tokens with
#    shared system prefixes (node/examples/router_bench.rs) -> bench/results/router-decision.json
# 2. Frontend added latency: two peers on loopback. W serves its own engine
#    (--local-engine-only); F (--role frontend) serves the same API through the
#    cluster, so every request it takes is routed, leased and streamed from W's worker.
#    Alternating stator-bench runs, one request at a time, drive W directly and then F with the
#    same shape, so both see the same engine and host load; the differences of their TTFT and
#    ITL percentiles are what the frontend adds -> bench/results/router-frontend-latency.json.
#
#   ROUTING_BENCH_QUICK=1 for a short smoke run; ROUTING_BENCH_NO_BUILD=1 to use the release
#   binaries already in target/release.
set -euo pipefail
cd "$(dirname "$0")/../.."
results=bench/results
mkdir -p "$results"
model=${STATOR_MODEL:-${STATOR_MODEL_DIR:-$HOME/.cache/stator/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
name=SmolLM2-135M-Instruct
quick=${ROUTING_BENCH_QUICK:-0}

tools/fetch-model.sh
if [[ ${ROUTING_BENCH_NO_BUILD:-0} != 1 ]]; then
  cargo build --release -p stator -p stator-tools --bin stator --bin stator-bench --example router_bench
fi

echo "==> router decision time"
decisions=20000; [[ $quick == 1 ]] && decisions=2000
target/release/examples/router_bench "$decisions" "$results/router-decision.json"

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_udp_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
w_http=$(free_port); f_http=$(free_port); w_quic=$(free_udp_port); f_quic=$(free_udp_port)
export STATOR_LOG=${STATOR_LOG:-info,openraft=warn,sled=warn,quinn=warn}

target/release/stator peer --data-dir "$tmp/w" --listen "127.0.0.1:$w_quic" --http "127.0.0.1:$w_http" \
  --model "$model" --served-model-name "$name" --kv-cache-mib 256 --local-engine-only >"$tmp/w.log" 2>&1 &
pids+=($!)
token=""
for _ in $(seq 1 150); do
  token=$(sed -n 's/.*join token: *\([^ ]*\).*/\1/p' "$tmp/w.log" | head -1)
  [[ -n $token ]] && break
  sleep 0.2
done
[[ -n $token ]] || { echo "W printed no join token"; cat "$tmp/w.log"; exit 1; }
target/release/stator peer --data-dir "$tmp/f" --listen "127.0.0.1:$f_quic" --http "127.0.0.1:$f_http" \
  --join "127.0.0.1:$w_quic" --token "$token" --role frontend \
  --model "$model" --served-model-name "$name" >"$tmp/f.log" 2>&1 &
pids+=($!)

# Up once a routed request completes through F (W's worker is registered, F knows it).
ok=0
for _ in $(seq 1 300); do
  if curl -sf "http://127.0.0.1:$f_http/v1/completions" -H 'content-type: application/json' \
      -d "{\"model\":\"$name\",\"prompt\":\"hello\",\"max_tokens\":2}" >/dev/null; then ok=1; break; fi
  sleep 0.2
done
[[ $ok == 1 ]] || { echo "F never served a routed request"; tail -50 "$tmp"/*.log; exit 1; }

# One request at a time, alternating short runs against W and F so that both see the same
# (otherwise idle) engine and the same background load of the host; samples are pooled. Each
# run has its own seed: a prompt seen before would be served from the prefix cache.
rounds=6; per_round=20; [[ $quick == 1 ]] && rounds=2 && per_round=5
shape=(--model "$name" --endpoint completions --no-progress --fail-on-error --concurrency 1
       --max-requests "$per_round" --input-tokens 128 --output-tokens 32)
echo "==> frontend added latency: $rounds rounds of $per_round requests, direct then routed"
mkdir -p "$tmp/runs"
for r in $(seq 1 "$rounds"); do
  target/release/stator-bench run --url "http://127.0.0.1:$w_http" "${shape[@]}" --seed "$((100 + r))" \
    --out "$tmp/runs/direct-$r.json" >/dev/null
  target/release/stator-bench run --url "http://127.0.0.1:$f_http" "${shape[@]}" --seed "$((200 + r))" \
    --out "$tmp/runs/routed-$r.json" >/dev/null
done
curl -sf "http://127.0.0.1:$f_http/metrics" | grep -E '^stator_router_(decision_seconds|decisions_total|workers|indexed_blocks|load_table_age)' \
  >"$tmp/f-metrics.txt" || true

python3 - "$results" "$tmp/f-metrics.txt" "$tmp/runs" "$rounds" "$per_round" <<'EOF'
import glob, json, statistics, sys
results, metrics_path, runs, rounds, per_round = sys.argv[1:6]
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * p))]
def side(label):
    ttft, e2e, itl50, itl99, ok, n = [], [], [], [], 0, 0
    for path in sorted(glob.glob(f"{runs}/{label}-*.json")):
        run = json.load(open(path))["runs"][0]
        for s in run["samples"]:
            n += 1
            if s.get("error_kind") is None and s.get("ttft_ms") is not None:
                ok += 1
                ttft.append(s["ttft_ms"]); e2e.append(s["e2e_ms"])
        itl50.append(run["summary"]["itl_ms"]["p50"]); itl99.append(run["summary"]["itl_ms"]["p99"])
    return {"requests": n, "succeeded": ok,
            "ttft_ms_p50": pct(ttft, 0.5), "ttft_ms_p99": pct(ttft, 0.99),
            "itl_ms_p50": statistics.median(itl50), "itl_ms_p99": statistics.median(itl99),
            "e2e_ms_p50": pct(e2e, 0.5), "e2e_ms_p99": pct(e2e, 0.99)}
direct, routed = side("direct"), side("routed")
rows = {}
print("| metric | direct (W) ms | through frontend (F) ms | added ms |")
print("|---|---|---|---|")
for k in ("ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99", "e2e_ms_p50", "e2e_ms_p99"):
    d, r = direct[k], routed[k]
    rows[k] = {"direct": d, "routed": r, "added": r - d}
    print(f"| {k} | {d:.2f} | {r:.2f} | {r - d:+.2f} |")
with open(metrics_path) as f:
    frontend_metrics = [l.strip() for l in f if l.strip()]
out = {
    "benchmark": "frontend added latency vs calling the worker directly (issue 5, #2)",
    "command": "bench/routing/run.sh",
    "setup": "2 peers on loopback, same host; W serves its own engine (--local-engine-only), F (--role frontend) "
             f"routes every request to W under a lease; {rounds} alternating rounds of {per_round} requests "
             "against W then F, one request at a time, 128 prompt / 32 output tokens. TTFT/e2e: pooled "
             "samples; ITL p50/p99: median over rounds of each run's ITL percentile.",
    "direct": direct, "routed": routed, "latency_ms": rows,
    "frontend_metrics": frontend_metrics,
}
with open(f"{results}/router-frontend-latency.json", "w") as f:
    json.dump(out, f, indent=2)
EOF
