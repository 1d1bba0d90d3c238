#!/usr/bin/env bash
# End to end on the GPU: `stator peer --device cuda:0` driven by stator-bench at 1, 16 and 64
# concurrent streams, for SmolLM2-135M (real GGUF) and the Llama-3.2-1B shape (random weights,
# SmolLM2's tokenizer). Two halves, like tools/gpu-check.sh:
#   Here (no GPU):   tools/gpu-e2e.sh           release build, strip, xz into carry/e2e/
#   Device machine:  tools/gpu-e2e.sh --device  needs carry/e2e and the GGUF (carry/smollm2.gguf,
#                                                or its halves carry/gguf-a + carry/gguf-b)
# Prints a table last; JSON per run and peer logs go to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != "--device" ]]; then
    cargo build --release -p stator -p stator-tools
    mkdir -p carry/e2e
    for bin in stator stator-bench; do
        strip -o "carry/e2e/$bin" "target/release/$bin"
        xz -T2 -6 -f "carry/e2e/$bin"
    done
    du -sh carry/e2e/*
    exit 0
fi

# Per-run files go to $WORK; $OUT gets e2e-all.json (every report) and a tarball of the rest.
OUT="${E2E_OUT:-${OUT:-/tmp/gpu-e2e-out}}"
WORK="${E2E_WORK:-/tmp/gpu-e2e-work}"
mkdir -p "$OUT" "$WORK"
bin=/tmp/stator-e2e/bin
mkdir -p "$bin"
unxz_to() { # unxz_to FILE.xz DEST: xz where installed, else Python's lzma
    if command -v xz >/dev/null; then xz -dc "$1" >"$2"; else
        python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' "$1" "$2"
    fi
    chmod +x "$2"
}
for b in stator stator-bench; do unxz_to "carry/e2e/$b.xz" "$bin/$b"; done
model=$(bash tools/gpu-model.sh)

CONCURRENCY="${CONCURRENCY:-1 16 64}"
INPUT_TOKENS="${INPUT_TOKENS:-256}"
OUTPUT_TOKENS="${OUTPUT_TOKENS:-128}"
status=0
peer_pid=
# A peer must not outlive the script, whatever ends it.
trap '[[ -z $peer_pid ]] || kill "$peer_pid" 2>/dev/null || true' EXIT

# serve NAME LABEL GRAPHS ARGS...: one single-node cluster on the GPU (decode CUDA graphs on
# when GRAPHS is 1), benchmarked at each concurrency; reports are named by LABEL.
serve() {
    local name=$1 label=$2 graphs=$3; shift 3
    local data=${DATA_ROOT:-/tmp/stator-e2e}/$label http=127.0.0.1:18080 quic=127.0.0.1:17400
    rm -rf "$data"
    STATOR_CUDA_GRAPHS=$graphs "$bin/stator" peer --data-dir "$data" --listen "$quic" --http "$http" --device "${DEVICE:-cuda:0}" \
        --served-model-name "$name" --max-num-seqs 64 "$@" >"$WORK/peer-$label.log" 2>&1 &
    local pid=$!
    peer_pid=$pid
    local deadline=$((SECONDS + 180))
    until python3 -c 'import sys,urllib.request; sys.exit(sys.argv[2] not in urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "http://$http/v1/models" "$name" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS > deadline)); then
            echo "peer $label did not come up (see peer-$label.log):"; tail -n 20 "$WORK/peer-$label.log"
            kill "$pid" 2>/dev/null || true
            status=1
            return
        fi
        sleep 1
    done
    echo "peer $label up ($SECONDS s into the script)"
    for c in $CONCURRENCY; do
        local requests=$((c * 4 > 16 ? c * 4 : 16))
        timeout 300 "$bin/stator-bench" run --url "http://$http" --model "$name" --concurrency "$c" \
            --input-tokens "$INPUT_TOKENS" --output-tokens "$OUTPUT_TOKENS" --max-requests "$requests" \
            --request-timeout 120 --no-progress --out "$WORK/e2e-$label-c$c.json" >"$WORK/bench-$label-c$c.log" 2>&1 \
            || { echo "stator-bench $label c$c failed:"; tail -n 5 "$WORK/bench-$label-c$c.log"; status=1; }
    done
    # A second client for one stream: Python's http.client, timing the response headers and
    # the first non-empty content chunk (tells the server's share of TTFT from the client's).
    if [[ "${PY_TTFT:-0}" == 1 ]]; then
        python3 - "$http" "$name" <<'PY' || true
import http.client, json, sys, time
host, port = sys.argv[1].split(":"); model = sys.argv[2]
words = "service system it person mother point reason team history from company week fact time".split()
prompt = " ".join(words[i % len(words)] for i in range(240))
body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8,
                   "ignore_eos": True, "stream": True})
heads, firsts = [], []
conn = http.client.HTTPConnection(host, int(port))
for _ in range(20):
    t = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
    resp = conn.getresponse(); heads.append((time.perf_counter() - t) * 1e3); first = None
    while True:
        line = resp.readline()
        if not line: break
        if first is None and line.startswith(b"data:") and b"[DONE]" not in line:
            choices = json.loads(line[5:]).get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                first = (time.perf_counter() - t) * 1e3
    firsts.append(first if first is not None else float("nan"))
heads.sort(); firsts.sort()
print(f"python client, 1 stream, ~250-token chat prompt: headers p50 {heads[10]:.1f} ms, first content p50 {firsts[10]:.1f} ms")
PY
    fi
    grep -E "graph|CUDA backend ready" "$WORK/peer-$label.log" | head -3 || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# E2E_MODELS picks a subset; DEVICE=cpu (with small sizes) tries this script without a GPU.
models=" ${E2E_MODELS:-smollm2 llama-3.2-1b} "
[[ $models != *" smollm2 "* ]] || PY_TTFT=1 serve smollm2 smollm2 1 --model "$model"
[[ $models != *" llama-3.2-1b "* ]] || serve llama-3.2-1b llama-3.2-1b 1 --model "$model" --random-weights llama-3.2-1b
# The same SmolLM2 runs with every step launched eagerly (GRAPHS_AB=0 skips this).
[[ "${GRAPHS_AB:-1}" == 0 ]] || serve smollm2 smollm2-nographs 0 --model "$model"
# Where does TTFT go (TTFT_PROBE=0 skips this)? Each request takes a lease, a Raft write that
# waits for an fsync of the data dir: time that disk's fsync, then serve one stream without
# leases (--local-engine-only) and one with the data dir in memory (/dev/shm).
if [[ "${TTFT_PROBE:-1}" == 1 ]]; then
    mkdir -p /tmp/stator-e2e
    python3 - /tmp/stator-e2e/fsync-probe <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)
ts = []
for _ in range(200):
    os.write(fd, b"x" * 256)
    t = time.perf_counter(); os.fdatasync(fd); ts.append(time.perf_counter() - t)
ts.sort()
print(f"fdatasync on /tmp/stator-e2e: p50 {ts[100]*1e3:.3f} ms, p99 {ts[197]*1e3:.3f} ms")
PY
    PY_TTFT=1 CONCURRENCY=1 serve smollm2 smollm2-noleases 1 --model "$model" --local-engine-only
    PY_TTFT=1 DATA_ROOT=/dev/shm/stator-e2e CONCURRENCY=1 serve smollm2 smollm2-shm 1 --model "$model"
fi

# A short serving run under compute-sanitizer memcheck (MEMCHECK_SERVE=0 skips it): the peer
# on the GPU serves 3 streamed requests (graphs and all), then stops on SIGTERM so the sanitizer
# prints its summary. Bounded: the whole step gives up after MEMCHECK_BUDGET_S seconds.
if [[ "${MEMCHECK_SERVE:-1}" == 1 ]] && command -v compute-sanitizer >/dev/null; then
    data=/tmp/stator-e2e/memcheck; rm -rf "$data"
    timeout "${MEMCHECK_BUDGET_S:-300}" compute-sanitizer --tool memcheck --leak-check no \
        "$bin/stator" peer --data-dir "$data" --listen 127.0.0.1:17401 --http 127.0.0.1:18081 \
        --device "${DEVICE:-cuda:0}" --served-model-name smollm2 --max-num-seqs 4 --model "$model" \
        >"$WORK/memcheck-serve.log" 2>&1 &
    sanitizer=$!
    python3 - <<'PY' || echo "memcheck serving run: the requests did not complete"
import http.client, json, time
deadline = time.time() + 240
while time.time() < deadline:
    try:
        c = http.client.HTTPConnection("127.0.0.1", 18081, timeout=5); c.request("GET", "/v1/models")
        if b"smollm2" in c.getresponse().read(): break
    except OSError: pass
    time.sleep(2)
for i in range(3):
    c = http.client.HTTPConnection("127.0.0.1", 18081, timeout=120)
    body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": f"Count to {i + 3}."}],
                       "max_tokens": 24, "stream": True})
    c.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
    r = c.getresponse(); n = sum(1 for line in r.read().split(b"\n") if line.startswith(b"data:"))
    print(f"memcheck serving run: request {i} status {r.status}, {n} SSE events")
PY
    pkill -TERM -x stator || true  # the peer itself; its sanitizer then prints the summary
    wait "$sanitizer" || true
    grep -E "ERROR SUMMARY|Program hit|Invalid" "$WORK/memcheck-serve.log" | head -5 || true
fi

echo
echo "################ E2E SUMMARY ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)) ################"
python3 - "$WORK" "$OUT" <<'PY'
import glob, json, os, sys
rows = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "e2e-*-c*.json"))):
    report = json.load(open(path))
    name = os.path.basename(path)[4:-5]
    for run in report["runs"]:
        s = run["summary"]
        q = lambda k, p: (s.get(k) or {}).get(p, float("nan"))
        rows.append((name, s["succeeded"], s["requests"], q("ttft_ms", "p50"), q("ttft_ms", "p99"),
                     q("itl_ms", "p50"), q("itl_ms", "p99"), s["output_token_throughput"]))
rows.sort(key=lambda r: (r[0].rsplit("-c", 1)[0], int(r[0].rsplit("-c", 1)[1])))
print(f"{'model / streams':<22} {'ok':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'out tok/s':>10}")
for r in rows:
    print(f"{r[0]:<22} {r[1]:>3}/{r[2]:<3} {r[3]:>9.1f} {r[4]:>9.1f} {r[5]:>8.2f} {r[6]:>8.2f} {r[7]:>10.0f}")
print("(milliseconds; every stator-bench report in e2e-all.json)")
merged = {os.path.basename(p)[4:-5]: json.load(open(p)) for p in glob.glob(os.path.join(sys.argv[1], "e2e-*-c*.json"))}
json.dump(merged, open(os.path.join(sys.argv[2], "e2e-all.json"), "w"), indent=1)
PY
[[ "$WORK" == "$OUT" ]] || tar -C "$WORK" -cJf "$OUT/e2e-logs.tar.xz" .
exit $status
