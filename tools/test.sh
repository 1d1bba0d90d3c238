#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests use (Python packages for the
# NumPy reference and the official OpenAI client, the default model), builds the binaries the
# integration tests start, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> Python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

echo "==> Debian packages the tests use (a real Prometheus server, curl)"
if ! command -v prometheus >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]]; then apt-get update -qq && apt-get install -y -qq prometheus curl >/dev/null;
  else sudo apt-get update -qq && sudo apt-get install -y -qq prometheus curl >/dev/null; fi
  # The package starts a system service we do not want; the tests run their own server.
  (systemctl stop prometheus || service prometheus stop || pkill -x prometheus) >/dev/null 2>&1 || true
fi

echo "==> default model (SmolLM2-135M-Instruct GGUF)"
tools/fetch-model.sh

echo "==> build"
cargo build --workspace --bins --locked

echo "==> tests"
# Tests that need the default model fail instead of skipping when it is missing.
export STATOR_REQUIRE_MODEL=1
cargo test --workspace --locked -- --test-threads "${STATOR_TEST_THREADS:-2}"
