#!/usr/bin/env bash
# CUDA backend checks + memcheck + benchmarks (decode eager and from CUDA graphs) in two halves.
#   Here (no GPU):   tools/gpu-check.sh
#       builds cuda_check/cuda_bench (dev profile) into carry/bin/, splits the SmolLM2 GGUF into
#       carry/gguf-a + carry/gguf-b (tools/gpu-model.sh), and, unless SKIP_E2E=1, stages the
#       release binaries for tools/gpu-e2e.sh in carry/e2e/.
#   Device machine:  tools/gpu-check.sh --device [--model-only] [--e2e]
#       kernel checks vs float64, model checks vs the CPU backend (bf16 and f16, graphs on and
#       off), memcheck, cuda_bench, the HF baseline (SKIP_HF=1 skips it); with both GGUF halves
#       present, the real SmolLM2 checks on all 30 layers. --model-only: the real-weights checks
#       alone. --e2e: then tools/gpu-e2e.sh. A summary table comes last.
# The GGUF halves cannot travel in one call (64 MiB). Two consecutive calls, the second issued
# at once while the machine is warm (files carried earlier stay there):
#   run(command="bash tools/gpu-check.sh --device", carry=["carry/bin","carry/gguf-a","carry/e2e"])
#   run(command="bash tools/gpu-check.sh --device --model-only --e2e", carry=["carry/gguf-b"])
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != "--device" ]]; then
    cargo build -p stator-gpu --example cuda_check --example cuda_bench
    mkdir -p carry/bin
    for bin in cuda_check cuda_bench; do
        strip -o "carry/bin/$bin" "target/debug/examples/$bin"
        xz -T2 -6 -f "carry/bin/$bin"
    done
    model="${STATOR_MODEL:-$HOME/.cache/stator/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
    if [[ -f "$model" ]]; then
        bash tools/gpu-model.sh --split "$model"
    else
        echo "no SmolLM2 GGUF at $model: the real-weights checks will be skipped" >&2
    fi
    [[ "${SKIP_E2E:-0}" == 1 ]] || bash tools/gpu-e2e.sh
    du -sh carry/*
    exit 0
fi
shift
model_only=0 e2e=0
for arg in "$@"; do
    case $arg in
        --model-only) model_only=1 ;;
        --e2e) e2e=1 ;;
        *) echo "unknown option $arg" >&2; exit 2 ;;
    esac
done

export PYTHONUNBUFFERED=1 STATOR_KERNEL_CACHE=/tmp/stator-kernels
# Logs go to $WORK; $OUT (what the device tool brings back: at most 8 files) gets the key
# files and a tarball of the rest at the end.
OUT="${OUT:-/tmp/gpu-check-out}"
WORK=/tmp/gpu-check-work
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK"
bin=/tmp/stator-check/bin
mkdir -p "$bin"
for b in cuda_check cuda_bench; do
    [[ -x $bin/$b && ! carry/bin/$b.xz -nt $bin/$b ]] && continue
    if command -v xz >/dev/null; then xz -dc "carry/bin/$b.xz" >"$bin/$b"; else
        python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' "carry/bin/$b.xz" "$bin/$b"
    fi
    chmod +x "$bin/$b"
done
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$WORK/gpu.txt"

status=0
summaries=()
if model=$(bash tools/gpu-model.sh 2>"$WORK/model.log"); then
    cat "$WORK/model.log"
    "$bin/cuda_check" --model-only --dtype "${DTYPES:-bf16,f16}" --gguf "$model" >"$WORK/check-smollm2.log" 2>&1 || status=$?
    tail -n 60 "$WORK/check-smollm2.log"
    summaries+=("$WORK/check-smollm2.log")
else
    echo "real-weights checks skipped: $(tail -n 1 "$WORK/model.log")"
fi

if [[ $model_only == 0 ]]; then
    "$bin/cuda_check" --dtype "${DTYPES:-bf16,f16}" >"$WORK/check.log" 2>&1 || status=$?
    tail -n 40 "$WORK/check.log"
    summaries+=("$WORK/check.log")
    if [[ "${SKIP_MEMCHECK:-0}" != 1 ]]; then
        # The small model's checks include graph capture and replay.
        compute-sanitizer --tool memcheck --leak-check no --error-exitcode 99 "$bin/cuda_check" >"$WORK/memcheck.log" 2>&1 \
            && echo "memcheck: clean" || { echo "memcheck: FAILED (exit $?)"; status=1; }
        grep -E "ERROR SUMMARY|Invalid|out of bounds" "$WORK/memcheck.log" | head -20 || true
    fi
    "$bin/cuda_bench" ${BENCH_ARGS:-} --out "$WORK/cuda_bench.json" >"$WORK/bench.log" 2>&1 || status=$?
    if [[ "${SKIP_HF:-0}" != 1 ]]; then
        # One process per model: a device-side assert in one poisons its whole CUDA context.
        : >"$WORK/hf.log"
        for m in ${HF_MODELS:-llama-3.2-1b llama-3.1-8b}; do
            python3 tools/hf_baseline.py --models "$m" --out "$WORK/hf-$m.json" >>"$WORK/hf.log" 2>&1 || status=$?
        done
        python3 tools/hf_baseline.py --merge "$WORK"/hf-*.json --compare "$WORK/cuda_bench.json" >>"$WORK/hf.log" 2>&1 || status=$?
    fi
fi

if [[ $e2e == 1 ]]; then
    E2E_WORK="$WORK/e2e" E2E_OUT="$WORK/e2e" bash tools/gpu-e2e.sh --device >"$WORK/e2e.log" 2>&1 || status=$?
fi

echo
echo "################ SUMMARY ################"
for log in "${summaries[@]}"; do
    sed -n '/=== cuda_check summary/,$p' "$log"
done
[[ -f "$WORK/memcheck.log" ]] && grep -E "ERROR SUMMARY" "$WORK/memcheck.log" | tail -1
[[ -f "$WORK/bench.log" ]] && sed -n '/=== cuda_bench summary/,$p' "$WORK/bench.log"
[[ -f "$WORK/hf.log" ]] && sed -n '/=== stator CUDA vs HF/,$p' "$WORK/hf.log"
[[ -f "$WORK/e2e.log" ]] && sed -n '/E2E SUMMARY/,$p' "$WORK/e2e.log"
grep -hE "failed|Error|error" "$WORK"/bench.log "$WORK"/hf.log "$WORK"/e2e.log 2>/dev/null | grep -v Assertion | head -5 || true
for f in cuda_bench.json check.log check-smollm2.log bench.log e2e/e2e-all.json; do
    [[ -f "$WORK/$f" ]] && cp "$WORK/$f" "$OUT/"
done
tar -C "$WORK" -cJf "$OUT/logs.tar.xz" .
exit $status
