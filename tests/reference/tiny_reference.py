#!/usr/bin/env python3
"""A tiny random Llama with Qwen2-style Q/K/V biases, Llama 3.1 rope scaling and an untied
output head, run through the same float64 reference forward as reference.py.

The SmolLM2 golden fixture covers neither biases, rope scaling nor an untied head; this one
does, with its weights stored in the fixture so the Rust test needs no model file.
Writes fixtures/tiny_bias_llama3.json:

  config            ModelConfig fields (the Rust struct's names)
  weights           name -> {shape, f32_le_base64}; Hugging Face layout, rotate_half order
  prompt_ids        prefill tokens; decode_ids: tokens fed one by one afterwards
  prefill_logits    logits of every prompt position, row-major [len(prompt_ids), vocab]
  decode_logits     logits after each decode token, [len(decode_ids), vocab]

Usage: python3 tiny_reference.py [OUT.json]
"""

import json
import os
import sys

import numpy as np

from reference import Model, f32_base64

CONFIG = {
    "architecture": "qwen2",
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 8,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    # With head_dim 8 the four wavelengths (6, 63, 628, 6283) fall in all three bands.
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    "attention_bias": True,
}
PROMPT_LEN = 21
DECODE_LEN = 6


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "fixtures", "tiny_bias_llama3.json"
    )
    c = CONFIG
    rng = np.random.default_rng(20241125)
    h, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    q_dim, kv_dim = c["num_heads"] * c["head_dim"], c["num_kv_heads"] * c["head_dim"]

    stored = {}

    def tensor(name, shape, scale=0.2, offset=0.0):
        # Round to f32 first: Rust sees exactly these values.
        values = (offset + scale * rng.standard_normal(shape)).astype(np.float32)
        stored[name] = {"shape": list(shape), "f32_le_base64": f32_base64(values.ravel())}
        return values.astype(np.float64)

    layers = []
    for i in range(c["num_layers"]):
        p = f"layers.{i}."
        layers.append(
            {
                "attn_norm": tensor(p + "attn_norm", (h,), 0.1, 1.0),
                "wq": tensor(p + "wq", (q_dim, h)),
                "wk": tensor(p + "wk", (kv_dim, h)),
                "wv": tensor(p + "wv", (kv_dim, h)),
                "wo": tensor(p + "wo", (h, q_dim)),
                "bq": tensor(p + "bq", (q_dim,)),
                "bk": tensor(p + "bk", (kv_dim,)),
                "bv": tensor(p + "bv", (kv_dim,)),
                "ffn_norm": tensor(p + "ffn_norm", (h,), 0.1, 1.0),
                "w_gate": tensor(p + "w_gate", (inter, h)),
                "w_up": tensor(p + "w_up", (inter, h)),
                "w_down": tensor(p + "w_down", (h, inter)),
            }
        )
    weights = {
        "embed": tensor("embed", (vocab, h), 1.0),
        "layers": layers,
        "norm": tensor("final_norm", (h,), 0.1, 1.0),
        "output": tensor("lm_head", (vocab, h)),
    }
    model_cfg = {
        "n_layers": c["num_layers"],
        "n_heads": c["num_heads"],
        "n_kv_heads": c["num_kv_heads"],
        "head_dim": c["head_dim"],
        "eps": c["rms_norm_eps"],
        "theta": c["rope_theta"],
        "rope_scaling": c["rope_scaling"],
    }
    model = Model(model_cfg, weights)
    prompt = [int(t) for t in rng.integers(0, vocab, PROMPT_LEN)]
    decode = [int(t) for t in rng.integers(0, vocab, DECODE_LEN)]
    cache = model.new_cache()
    prefill_logits = model.forward(prompt, 0, cache)
    decode_logits = [model.forward([t], PROMPT_LEN + i, cache)[-1] for i, t in enumerate(decode)]
    fixture = {
        "generator": "tests/reference/tiny_reference.py (NumPy float64)",
        "config": c,
        "weights": stored,
        "prompt_ids": prompt,
        "decode_ids": decode,
        "prefill_logits": f32_base64(np.asarray(prefill_logits).ravel()),
        "decode_logits": f32_base64(np.asarray(decode_logits).ravel()),
    }
    with open(out_path, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {out_path} ({os.path.getsize(out_path)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
