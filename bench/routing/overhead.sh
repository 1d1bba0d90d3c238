#!/usr/bin/env bash
# Issue 5, benchmark 2b: what a frontend peer adds to a request, with the engine's share small.
# Worker W (--local-engine-only: its own API runs its engine directly) and frontend F
# (--role frontend: routes, takes the lease, streams from W's worker over QUIC), on loopback.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${STATOR_BIN:-target/release/stator}
model=${STATOR_MODEL:-$HOME/.cache/stator/models/SmolLM2-135M-Instruct.Q4_1.gguf}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
"$bin" peer --data-dir "$dir/w" --listen 127.0.0.1:17451 --http 127.0.0.1:18451 --model "$model" \
    --local-engine-only >"$dir/w.log" 2>&1 &
for _ in $(seq 90); do curl -sf 127.0.0.1:18451/health >/dev/null && break; sleep 1; done
token=$(grep -o 'stator1-[0-9a-f]*-[A-Za-z0-9]*' "$dir/w.log" | head -1)
"$bin" peer --data-dir "$dir/f" --listen 127.0.0.1:17452 --http 127.0.0.1:18452 --model "$model" \
    --role frontend --join 127.0.0.1:17451 --token "$token" >"$dir/f.log" 2>&1 &
for _ in $(seq 90); do curl -sf 127.0.0.1:18452/health >/dev/null && break; sleep 1; done
sleep 2
python3 bench/routing/overhead.py http://127.0.0.1:18451 http://127.0.0.1:18452 \
    bench/results/frontend-overhead.json "${ROUNDS:-10}" "${PER_ROUND:-30}"
