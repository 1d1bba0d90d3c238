#!/usr/bin/env bash
# CUDA backend check + benchmark in two halves.
#   Here (no GPU):   tools/gpu-check.sh          builds the examples, stages carry/, prints the run call
#   Device machine:  tools/gpu-check.sh --device  checks, memcheck, benchmarks, HF baseline; summary last
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != "--device" ]]; then
    cargo build -p stator-gpu --example cuda_check --example cuda_bench
    mkdir -p carry
    for bin in cuda_check cuda_bench; do
        cp "target/debug/examples/$bin" carry/
        strip carry/$bin
    done
    model="${STATOR_MODEL:-$HOME/.cache/stator/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
    if [[ -f "$model" ]]; then
        # The whole GGUF (94 MiB) exceeds one call's carry limit: keep the first layers only.
        carry/cuda_check truncate "$model" carry/smollm2-trunc.gguf "${LAYERS:-8}"
    else
        echo "no SmolLM2 GGUF at $model: the real-weights check will be skipped" >&2
    fi
    du -sh carry/*
    echo
    echo "device call:  run(command=\"bash tools/gpu-check.sh --device\", carry=[\"carry\"], timeout_s=600)"
    exit 0
fi

export PYTHONUNBUFFERED=1 STATOR_KERNEL_CACHE=/tmp/stator-kernels
OUT="${OUT:-/tmp/gpu-check-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
gguf_args=()
[[ -f carry/smollm2-trunc.gguf ]] && gguf_args=(--gguf carry/smollm2-trunc.gguf)

status=0
carry/cuda_check "${gguf_args[@]}" >"$OUT/check.log" 2>&1 || status=$?
tail -n 80 "$OUT/check.log"
if [[ "${SKIP_MEMCHECK:-0}" != 1 ]]; then
    compute-sanitizer --tool memcheck --leak-check no --error-exitcode 99 carry/cuda_check >"$OUT/memcheck.log" 2>&1 \
        && echo "memcheck: clean" || { echo "memcheck: FAILED (exit $?)"; status=1; }
    grep -E "ERROR SUMMARY|Invalid|out of bounds" "$OUT/memcheck.log" | head -20 || true
fi
carry/cuda_bench ${BENCH_ARGS:-} --out "$OUT/cuda_bench.json" >"$OUT/bench.log" 2>&1 || status=$?
if [[ "${SKIP_HF:-0}" != 1 ]]; then
    # One process per model: a device-side assert in one poisons its whole CUDA context.
    : >"$OUT/hf.log"
    for model in ${HF_MODELS:-llama-3.2-1b llama-3.1-8b}; do
        python3 tools/hf_baseline.py --models "$model" --out "$OUT/hf-$model.json" >>"$OUT/hf.log" 2>&1 || status=$?
    done
    python3 tools/hf_baseline.py --merge "$OUT"/hf-*.json --compare "$OUT/cuda_bench.json" >>"$OUT/hf.log" 2>&1 || status=$?
fi

echo
echo "################ SUMMARY ################"
sed -n '/=== cuda_check summary/,$p' "$OUT/check.log"
sed -n '/=== cuda_bench summary/,$p' "$OUT/bench.log"
[[ -f "$OUT/hf.log" ]] && sed -n '/=== stator CUDA vs HF/,$p' "$OUT/hf.log"
grep -E "failed|Error|error" "$OUT/bench.log" "$OUT/hf.log" 2>/dev/null | grep -v Assertion | head -5 || true
exit $status
