#!/usr/bin/env bash
# Regenerates fixtures/smollm2_greedy.json from the GGUF with the NumPy reference.
# Usage: tests/reference/regen.sh [MODEL.gguf]   (default: the model tools/fetch-model.sh installs)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
model="${1:-${STATOR_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stator/models}/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [[ ! -f "$model" ]]; then
    echo "model not found: $model (run tools/fetch-model.sh first)" >&2
    exit 1
fi
python3 -c 'import gguf, numpy' 2>/dev/null || python3 -m pip install --quiet gguf numpy
python3 "$here/reference.py" "$model" "$here/fixtures/smollm2_greedy.json"
python3 "$here/tiny_reference.py" "$here/fixtures/tiny_bias_llama3.json"
