#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests use (Python packages for the
# NumPy reference and the official OpenAI client, the default model), builds the binaries the
# integration tests start, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> Python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

echo "==> default model (SmolLM2-135M-Instruct GGUF)"
tools/fetch-model.sh

echo "==> build"
cargo build --workspace --bins --locked

echo "==> tests"
# Tests that need the default model fail instead of skipping when it is missing.
export STATOR_REQUIRE_MODEL=1
cargo test --workspace --locked -- --test-threads "${STATOR_TEST_THREADS:-2}"
