#!/usr/bin/env bash
# Device machine, after tools/gpu-e2e.sh staged carry/e2e and the GGUF halves (see its header):
#   run(command="bash tools/gpu-e2e-graphs-ab.sh", carry=["carry/gguf-b"]) right after a call carrying the rest.
# SmolLM2 end to end at 16 and 64 streams: graphs for batches <= 16 (default) vs every
# bucket vs <= 32 vs PDL off vs no graphs.
set -u
cd "$(dirname "$0")/.."
# default = graphs for buckets <= 16 (CudaOptions::graph_max_batch); "all" graphs every bucket.
for v in default all gmax32 pdl0; do
    case $v in
        default) extra=() ;;
        all) extra=(STATOR_CUDA_GRAPH_MAX_BATCH=1000000) ;;
        gmax32) extra=(STATOR_CUDA_GRAPH_MAX_BATCH=32) ;;
        pdl0) extra=(STATOR_CUDA_PDL=0) ;;
    esac
    ab=0; [[ $v == default ]] && ab=1
    echo "=== variant $v"
    env "${extra[@]}" E2E_WORK=/tmp/e2e-$v E2E_OUT=$OUT/$v E2E_MODELS=smollm2 CONCURRENCY="16 64" \
        GRAPHS_AB=$ab TTFT_PROBE=0 MEMCHECK_SERVE=0 bash tools/gpu-e2e.sh --device 2>&1 | grep -E "^smollm2"
done
echo "=== memcheck serving run"
MEMCHECK_SERVE=1 E2E_WORK=/tmp/e2e-memcheck E2E_OUT=$OUT/memcheck E2E_MODELS=none GRAPHS_AB=0 TTFT_PROBE=0 \
    MEMCHECK_BUDGET_S=240 bash tools/gpu-e2e.sh --device 2>&1 | grep -E "memcheck|ERROR SUMMARY|Invalid|Program hit"
