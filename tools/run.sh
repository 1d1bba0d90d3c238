#!/usr/bin/env bash
# Fresh machine to a serving peer: fetch the default model, build, start a one-node cluster
# serving SmolLM2-135M-Instruct through the OpenAI API.
#   STATOR_HTTP (default 127.0.0.1:8000), STATOR_QUIC (127.0.0.1:7400), STATOR_DATA (./data/peer0)
set -euo pipefail
cd "$(dirname "$0")/.."
http=${STATOR_HTTP:-127.0.0.1:8000}
quic=${STATOR_QUIC:-127.0.0.1:7400}
data=${STATOR_DATA:-./data/peer0}

tools/fetch-model.sh
cargo build --release --bin stator
cat <<MSG
==> starting stator on http://$http (Ctrl-C to stop). Try:
    curl -s http://$http/v1/chat/completions -H 'content-type: application/json' \\
      -d '{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":32}'
MSG
exec target/release/stator peer --data-dir "$data" --listen "$quic" --http "$http" "$@"
