#!/usr/bin/env bash
# Issue 7's run: aggregated (2 x aggregated) vs disaggregated (prefill + decode) stator clusters,
# one worker peer per GPU plus a `--role frontend` peer the bench talks to, replaying the Azure
# 2023 code/conv traces; then a SIGKILL of one worker under load (failover). With one GPU both
# workers share cuda:0 (each --gpu-memory-utilization 0.42): the layouts are then compared on
# the same single GPU and "per GPU" numbers are not those of a two-GPU run.
#   Here (no GPU):   tools/multigpu-bench.sh            release build + strip + xz into carry/e2e
#                                                      (via gpu-e2e.sh), traces into carry/multigpu
#   Device machine:  tools/multigpu-bench.sh --device   needs carry/e2e, carry/multigpu and the GGUF
#                                                      halves (carry/gguf-a + carry/gguf-b)
# Knobs (env): DEVICE=cpu (try the script without a GPU), RANDOM_WEIGHTS (preset; empty = the
# real GGUF), SCALES, DURATION (s per replay), TRACES, MAX_INPUT, E2E_RECHECK=1 (gpu-e2e.sh's
# SmolLM2 part at 16 and 64 streams first), LAYOUTS ("agg disagg"), FAILOVER=1, FAILOVER_SCALE, KV_MIB, MAX_SEQS,
# DISAGG_MIN, STATOR_BIN_DIR. (On CUDA the KV cache takes what --gpu-memory-utilization leaves;
# KV_MIB sizes it on the CPU.)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != "--device" ]]; then
    bash tools/gpu-e2e.sh
    mkdir -p carry/multigpu
    for t in code conv; do cp ../shared/traces/azure2023_$t.csv carry/multigpu/; done
    du -sh carry/multigpu carry/e2e
    exit 0
fi

OUT="${OUT:-/tmp/multigpu-out}"
WORK="${MG_WORK:-/tmp/multigpu-work}"
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK"
bin=/tmp/stator-e2e/bin
mkdir -p "$bin"
# STATOR_BIN_DIR: use binaries already unpacked there (trying the script here).
[[ -z "${STATOR_BIN_DIR:-}" ]] || bin=$STATOR_BIN_DIR
for b in stator stator-bench; do
    [[ -z "${STATOR_BIN_DIR:-}" ]] || continue
    if command -v xz >/dev/null; then xz -dc "carry/e2e/$b.xz" >"$bin/$b"; else
        python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' "carry/e2e/$b.xz" "$bin/$b"
    fi
    chmod +x "$bin/$b"
done
model=$(bash tools/gpu-model.sh)

DEVICE="${DEVICE:-cuda}"
RANDOM_WEIGHTS="${RANDOM_WEIGHTS-llama-3.2-1b}"
SCALES="${SCALES:-0.25 0.05}"
DURATION="${DURATION:-35}"
TRACES="${TRACES-code conv}"
MAX_INPUT="${MAX_INPUT:-4096}"
KV_MIB="${KV_MIB:-8192}"
MAX_SEQS="${MAX_SEQS:-64}"
name=bench-model
status=0

if [[ $DEVICE == cpu ]]; then
    gpus=0
    worker_devices=(cpu cpu)
    gpu_name=cpu
    gpu_share=""
    gpu_share_second=""
else
    gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
    gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
    if ((gpus >= 2)); then
        worker_devices=(cuda:0 cuda:1)
        gpu_share="--gpu-memory-utilization 0.9"
        gpu_share_second=$gpu_share
    else
        worker_devices=(cuda:0 cuda:0)
        # The engine caps the GPU's whole used memory (other processes' included) at this
        # fraction, so the second worker on a shared GPU gets the first's share plus its own.
        gpu_share="--gpu-memory-utilization 0.42"
        gpu_share_second="--gpu-memory-utilization 0.84"
    fi
fi
note="workers on ${worker_devices[*]} ($gpus GPU(s): $gpu_name)"
((gpus == 1)) && note="$note -- both workers SHARE ONE GPU: per-GPU goodput is not that of a 2-GPU run"
echo "$note"

if [[ "${E2E_RECHECK:-1}" == 1 && $DEVICE != cpu ]]; then
    echo "== e2e re-check: SmolLM2 at 16 and 64 streams =="
    E2E_OUT="$OUT" E2E_WORK="$WORK/e2e" E2E_MODELS=smollm2 CONCURRENCY="16 64" GRAPHS_AB=0 \
        bash tools/gpu-e2e.sh --device || { echo "e2e re-check failed"; status=1; }
fi

pids=()
stop_all() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap stop_all EXIT

# start_peer LABEL INDEX ROLE DEVICE [ARGS...]: peer INDEX listens on 1740INDEX / 1808INDEX.
start_peer() {
    local label=$1 i=$2 role=$3 dev=$4; shift 4
    local data=/tmp/stator-mg/$label-$i
    rm -rf "$data"
    STATOR_CUDA_GRAPHS=1 "$bin/stator" peer --data-dir "$data" --listen "127.0.0.1:1740$i" \
        --http "127.0.0.1:1808$i" --device "$dev" --role "$role" --served-model-name "$name" \
        --model "$model" "$@" >"$WORK/peer-$label-$i.log" 2>&1 &
    pids+=($!)
}
http_ok() { # http_ok URL [NEEDLE]
    python3 -c 'import sys,urllib.request; b=urllib.request.urlopen(sys.argv[1], timeout=2).read().decode(); sys.exit(len(sys.argv)>2 and sys.argv[2] not in b)' "$@" 2>/dev/null
}
wait_for() { # wait_for SECONDS WHAT COMMAND...
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@"; do
        if ((SECONDS > deadline)); then echo "timed out waiting for $what"; return 1; fi
        sleep 0.5
    done
}
peer_healthy() { # peer_healthy INDEX: up, or exit the wait at once when the peer has died
    kill -0 "${pids[$(($1 - 1))]}" 2>/dev/null || { echo "peer $1 exited"; return 0; }
    http_ok "http://127.0.0.1:1808$1/health"
}
join_token() { sed -n 's/^ *join token: *//p' "$1" | head -1; }
has_join_token() { [[ -n $(join_token "$1") ]]; }

# cluster LABEL ROLE_A ROLE_B [EXTRA...]: worker peers 1 and 2, frontend 3.
cluster() {
    local label=$1 role_a=$2 role_b=$3; shift 3
    local weights=()
    [[ -z $RANDOM_WEIGHTS ]] || weights=(--random-weights "$RANDOM_WEIGHTS")
    local worker_args=("${weights[@]}" --max-num-seqs "$MAX_SEQS" --kv-cache-mib "$KV_MIB" "$@")
    start_peer "$label" 1 "$role_a" "${worker_devices[0]}" "${worker_args[@]}" $gpu_share
    wait_for 60 "join token" has_join_token "$WORK/peer-$label-1.log" || return 1
    # Peer 2 sizes its memory from what the GPU has left: peer 1 must have taken its share.
    wait_for 120 "peer $label-1 engine" grep -q "engine started" "$WORK/peer-$label-1.log" || return 1
    local token
    token=$(join_token "$WORK/peer-$label-1.log")
    start_peer "$label" 2 "$role_b" "${worker_devices[1]}" --join 127.0.0.1:17401 --token "$token" "${worker_args[@]}" $gpu_share_second
    start_peer "$label" 3 frontend cpu --join 127.0.0.1:17401 --token "$token" "$@"
    local i
    for i in 1 2 3; do
        wait_for 240 "peer $label-$i health" peer_healthy "$i" || {
            tail -n 20 "$WORK/peer-$label-$i.log"; return 1; }
    done
    wait_for 60 "model on frontend" http_ok http://127.0.0.1:18083/v1/models "$name" || return 1
    # The first request proves both workers are routable before the clock starts.
    "$bin/stator-bench" run --url http://127.0.0.1:18083 --model "$name" --concurrency 4 \
        --input-tokens 128 --output-tokens 8 --max-requests 8 --request-timeout 60 --no-progress \
        >"$WORK/warmup-$label.log" 2>&1 || { echo "warm-up failed on $label"; tail -5 "$WORK/warmup-$label.log"; }
    echo "cluster $label up: peer 1 $role_a, peer 2 $role_b, peer 3 frontend ($SECONDS s into the script)"
}

# metrics_snapshot LABEL TAG: every peer's /metrics lines of interest into one file.
metrics_snapshot() {
    local i
    for i in 1 2 3; do
        python3 - "http://127.0.0.1:1808$i/metrics" "$i" <<'PY' || true
import sys, urllib.request
try:
    body = urllib.request.urlopen(sys.argv[1], timeout=3).read().decode()
except Exception as e:
    print(f"peer{sys.argv[2]} unreachable {e}"); sys.exit(0)
for line in body.splitlines():
    if line.startswith(("stator_kv_transfer", "stator_prefill", "stator_migration", "stator_leases")):
        print(f"peer{sys.argv[2]} {line}")
PY
    done >"$WORK/metrics-$1-$2.txt"
}

# A device call has a hard limit: past BUDGET_S seconds, replays are skipped so that the
# summary and logs still get written.
BUDGET_S="${BUDGET_S:-520}"
replay() { # replay LABEL TRACE SCALE [OUTTAG]
    local label=$1 trace=$2 scale=$3 tag=${4:-$1-$2-x$3}
    if ((SECONDS + DURATION + 20 > BUDGET_S)); then echo "skipped $tag: time budget"; return 0; fi
    metrics_snapshot "$tag" before
    timeout $((DURATION + 45)) "$bin/stator-bench" run --url http://127.0.0.1:18083 --model "$name" \
        --trace "carry/multigpu/azure2023_$trace.csv" --time-scale "$scale" --duration "$DURATION" \
        --max-input-tokens "$MAX_INPUT" --slo-ttft 500 --slo-itl 50 --request-timeout 45 \
        --no-progress --out "$WORK/bench-$tag.json" >"$WORK/bench-$tag.log" 2>&1 \
        || { echo "stator-bench $tag failed:"; tail -n 5 "$WORK/bench-$tag.log"; status=1; }
    metrics_snapshot "$tag" after
    echo "replayed $tag ($SECONDS s)"
}

admin_get() { # admin_get PEER PATH
    python3 - "http://127.0.0.1:1808$1$2" "/tmp/stator-mg/$LABEL-$1/admin.token" <<'PY'
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + open(sys.argv[2]).read().strip()})
print(urllib.request.urlopen(req, timeout=2).read().decode())
PY
}

# failover LABEL VICTIM: replay conv under load, SIGKILL peer VICTIM after a third of the run,
# time until no lease is owned by it any more (polled on the frontend).
failover() {
    local label=$1 victim=$2 tag=$1-failover
    if ((SECONDS + DURATION + 30 > BUDGET_S)); then echo "skipped $tag: time budget"; return 0; fi
    LABEL=$label
    local victim_node
    victim_node=$(python3 -c 'import json,sys,urllib.request; print(json.load(urllib.request.urlopen(sys.argv[1], timeout=2))["node_id"])' "http://127.0.0.1:1808$victim/health")
    replay "$label" conv "${FAILOVER_SCALE:-0.25}" "$tag" &
    local bench=$!
    sleep $((DURATION / 3))
    admin_get 3 /admin/v1/leases >"$WORK/leases-$tag-before.json" || true
    local victim_pid=${pids[$((victim - 1))]}
    local killed_at
    killed_at=$(date +%s.%N)
    kill -KILL "$victim_pid"
    python3 - "$victim_node" "$killed_at" "/tmp/stator-mg/$label-3/admin.token" >"$WORK/failover-$tag.json" <<'PY' || true
import json, sys, time, urllib.request
victim, killed_at, token = sys.argv[1], float(sys.argv[2]), open(sys.argv[3]).read().strip()
def leases():
    req = urllib.request.Request("http://127.0.0.1:18083/admin/v1/leases", headers={"Authorization": "Bearer " + token})
    return json.load(urllib.request.urlopen(req, timeout=2))
owned_before = None
deadline = time.time() + 30
result = {"victim_node": victim, "reassigned_after_s": None}
while time.time() < deadline:
    try:
        ls = leases()
    except Exception as e:
        time.sleep(0.02); continue
    mine = [l for l in ls if l["owner"].split("/")[0] == victim]
    if owned_before is None:
        owned_before = len(mine)
        result["victim_leases_at_kill"] = owned_before
    if not mine:
        result["reassigned_after_s"] = time.time() - killed_at
        result["leases_now"] = len(ls)
        break
    time.sleep(0.02)
print(json.dumps(result))
PY
    echo "failover $tag: $(cat "$WORK/failover-$tag.json")"
    wait "$bench" || status=1
}

for layout in ${LAYOUTS:-agg disagg}; do
    LABEL=$layout
    if [[ $layout == agg ]]; then
        cluster agg aggregated aggregated || { status=1; stop_all; continue; }
    else
        cluster disagg prefill decode --disagg-min-tokens "${DISAGG_MIN:-64}" || { status=1; stop_all; continue; }
    fi
    for trace in $TRACES; do
        for scale in $SCALES; do replay "$layout" "$trace" "$scale"; done
    done
    # Aggregated: kill worker 2 (not the bootstrap peer). Disaggregated 1P+1D: the decode peer
    # (2) is the only decode-capable worker, so its leases have no target (reassign.rs): the
    # run shows what the client then sees.
    [[ "${FAILOVER:-1}" != 1 ]] || failover "$layout" 2
    stop_all
done

python3 bench/multigpu/summary.py "$WORK" "$OUT" "$note" || status=1
tar -C "$WORK" -cJf "$OUT/multigpu-logs.tar.xz" . || true
exit $status
