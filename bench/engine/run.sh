#!/usr/bin/env bash
# Issue 3's benchmark: stator's CPU engine vs llama.cpp's OpenAI-compatible server on the same
# GGUF file (SmolLM2-135M-Instruct Q4_1), driven by the same load generator (stator-bench), in
# one run. Writes bench/results/engine-*.json and prints a table with stator/llama.cpp ratios.
#   ENGINE_BENCH_QUICK=1 for a short smoke run.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
results=bench/results
mkdir -p "$results"
model=${STATOR_MODEL:-${STATOR_MODEL_DIR:-$HOME/.cache/stator/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
venv=${LLAMACPP_VENV:-/opt/llamacpp-venv}
name=SmolLM2-135M-Instruct

tools/fetch-model.sh
cargo build --release -p stator -p stator-tools --bin stator --bin stator-bench
cargo build --release -p stator-gpu --example cpu_bench

if ! "$venv/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
  echo "==> building llama-cpp-python 0.3.36 (about 4 minutes)"
  python3 -m venv "$venv"
  # The native build segfaults at the first token on these CPUs.
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF" \
    "$venv/bin/pip" install --quiet 'llama-cpp-python[server]==0.3.36'
fi

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sp=$(free_port); lp=$(free_port); qp=$(free_port)

target/release/stator peer --data-dir "$tmp/stator" --listen "127.0.0.1:$qp" --http "127.0.0.1:$sp" \
  --model "$model" --kv-cache-mib 512 --max-num-seqs 64 >"$tmp/stator.log" 2>&1 &
pids+=($!)
# --interrupt_requests False: by default the server aborts the running request whenever a new
# one arrives, which would turn concurrent load into truncated outputs instead of a queue.
"$venv/bin/python" -m llama_cpp.server --model "$model" --model_alias "$name" --host 127.0.0.1 --port "$lp" \
  --n_threads "$(nproc)" --n_ctx 8192 --interrupt_requests False >"$tmp/llama.log" 2>&1 &
pids+=($!)

wait_up() {
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$1/v1/models" >/dev/null && return 0
    sleep 0.2
  done
  echo "server on port $1 did not come up"; cat "$tmp"/*.log; exit 1
}
wait_up "$sp"; wait_up "$lp"

quick=${ENGINE_BENCH_QUICK:-0}
scale() { if [[ $quick == 1 ]]; then echo $(( ($1 + 3) / 4 )); else echo "$1"; fi; }

bench() { # server port label extra-args...
  local server=$1 port=$2 label=$3; shift 3
  target/release/stator-bench run --url "http://127.0.0.1:$port" --model "$name" --endpoint completions \
    --no-progress --fail-on-error --out "$results/engine-$server-$label.json" "$@" >"$tmp/$server-$label.txt"
}

echo "==> load: the same shapes against both servers, one server at a time"
for server in stator llama.cpp; do
  port=$sp; [[ $server == llama.cpp ]] && port=$lp
  # Prefill: long prompt, one output token, one at a time.
  bench "$server" "$port" prefill --concurrency 1 --max-requests "$(scale 12)" --input-tokens 512 --output-tokens 1
  for c in 1 8 32; do
    n=$(scale $(( c < 8 ? 12 : c * 3 )))
    bench "$server" "$port" "c$c" --concurrency "$c" --max-requests "$n" --input-tokens 128 --output-tokens 64
  done
done

echo "==> engine only (no HTTP): decode and prefill throughput of the CPU backend"
target/release/examples/cpu_bench --model "$model" --batches 1,8,32,64 | tee "$results/engine-cpu-backend.txt"

python3 bench/engine/summarize.py "$results" | tee "$results/engine-summary.txt"
