#!/usr/bin/env bash
# Device side: joins the SmolLM2 GGUF from its halves (carried in two calls, each under the
# 64 MiB carry limit: carry/gguf-a/part.a, carry/gguf-b/part.b) into $MODEL_OUT and checks its
# sha256 (carry/gguf-b/sha256). Exits 0 with the joined path on stdout, or non-zero.
# Here: tools/gpu-model.sh --split [GGUF]   writes the halves and the checksum.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--split" ]]; then
    model="${2:-$HOME/.cache/stator/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
    mkdir -p carry/gguf-a carry/gguf-b
    head -c 40M "$model" >carry/gguf-a/part.a
    tail -c +$((40 * 1024 * 1024 + 1)) "$model" >carry/gguf-b/part.b
    sha256sum <"$model" | cut -d' ' -f1 >carry/gguf-b/sha256
    du -sh carry/gguf-a carry/gguf-b
    exit 0
fi
out="${MODEL_OUT:-/tmp/stator-model/smollm2.gguf}"
want=$(cat carry/gguf-b/sha256)
if [[ -f "$out" ]] && [[ "$(sha256sum <"$out" | cut -d' ' -f1)" == "$want" ]]; then
    echo "$out"; exit 0
fi
for part in carry/gguf-a/part.a carry/gguf-b/part.b; do
    [[ -f $part ]] || { echo "missing $part: carry gguf-a and gguf-b in consecutive calls" >&2; exit 2; }
done
mkdir -p "$(dirname "$out")"
cat carry/gguf-a/part.a carry/gguf-b/part.b >"$out"
got=$(sha256sum <"$out" | cut -d' ' -f1)
if [[ "$got" != "$want" ]]; then
    echo "joined GGUF sha256 $got, expected $want" >&2; rm -f "$out"; exit 3
fi
echo "joined GGUF verified (sha256 $got)" >&2
echo "$out"
