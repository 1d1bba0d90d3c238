#!/usr/bin/env python3
"""Writes smollm2_spot_values.json: a few dequantized values of the SmolLM2 GGUF in
Hugging Face layout, the reference for stator's loader on the real model.

Dequantization is the Python `gguf` package's; Q/K rows are un-permuted with the inverse of
llama.cpp's converter permutation (reshape(heads, hd/2, 2, in) -> swap -> reshape).
Run from this directory:  python3 make_model_spot_fixtures.py [path/to/model.gguf]
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

default = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
    "stator/models/SmolLM2-135M-Instruct.Q4_1.gguf",
)
r = GGUFReader(sys.argv[1] if len(sys.argv) > 1 else default)
tensors = {t.name: t for t in r.tensors}
heads = int(r.fields["llama.attention.head_count"].contents())
kv_heads = int(r.fields["llama.attention.head_count_kv"].contents())


def hf(name):
    t = tensors[name]
    w = dequantize(t.data, t.tensor_type).astype(np.float32)
    n = {"attn_q": heads, "attn_k": kv_heads}.get(name.split(".")[-2])
    if n:
        rows, cols = w.shape
        w = w.reshape(n, rows // n // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
    return w


spots = []
for name, rows in [
    ("token_embd.weight", [0, 19556, 49151]),
    ("blk.0.attn_q.weight", [0, 1, 31, 32, 63, 575]),
    ("blk.0.attn_k.weight", [0, 1, 32, 191]),
    ("blk.29.attn_q.weight", [5, 100]),
    ("blk.0.ffn_down.weight", [0, 575]),
    ("output_norm.weight", None),
]:
    w = hf(name)
    if rows is None:
        spots.append({"tensor": name, "row": None, "values": w[:8].tolist()})
    else:
        for row in rows:
            spots.append({"tensor": name, "row": row, "values": w[row, :8].tolist()})
with open("smollm2_spot_values.json", "w") as f:
    json.dump({"spots": spots}, f, indent=1)
print(f"wrote {len(spots)} spots")
