#!/usr/bin/env python3
"""Independent NumPy reference for stator's CPU backend (golden fixtures).

Reads a Llama-family GGUF with the PyPI `gguf` package, dequantizes every tensor with
`gguf.quants.dequantize`, undoes llama.cpp's Q/K row permutation, and runs a plain float64
Llama forward pass with a full (non-paged) KV cache. For a few fixed prompts it records the
greedy continuation and logits, written to fixtures/smollm2_greedy.json:

  prompts[i].prompt_ids      token ids fed to the model (no tokenizer needed in Rust)
  prompts[i].greedy_ids      argmax continuation, NUM_GENERATED tokens
  prompts[i].top2_margins    logit gap between best and second-best at each greedy step
  prompts[i].full_logits     {step, f32_le_base64}: every logit at generated step `step`
  prompts[i].top_logits      {step, ids, values, max_abs}: the TOP_K largest logits at later
                             steps, with the row's max |logit| (the error denominator)

Step k means "the logits that choose greedy_ids[k]" (step 0 = the last prompt position).

Usage: python3 reference.py [MODEL.gguf] [OUT.json]   (see regen.sh)
"""

import base64
import json
import os
import re
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

NUM_GENERATED = 40
FULL_LOGIT_STEPS = [0]
TOP_LOGIT_STEPS = [8, 31]
TOP_K = 256

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_QUESTIONS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain why the sky is blue.",
]
RAW_TEXTS = [
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    # Long enough to span many KV blocks and several prefill chunks.
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "clockmaker who repaired every clock in the valley. Each morning he opened his shop, lit "
    "the stove, and listened to the ticking of a hundred clocks. One winter day a young girl "
    "brought him a broken pocket watch that had belonged to her grandfather. The clockmaker "
    "turned it over in his hands and noticed a strange symbol engraved on the back. He smiled and said",
]


# ---------------------------------------------------------------------------------------------
# Model loading


def field(reader, key):
    return reader.fields[key].contents()


def load_model(path):
    reader = GGUFReader(path)
    arch = field(reader, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise SystemExit(f"unsupported architecture {arch}")
    cfg = {
        "n_layers": int(field(reader, f"{arch}.block_count")),
        "hidden": int(field(reader, f"{arch}.embedding_length")),
        "n_heads": int(field(reader, f"{arch}.attention.head_count")),
        "n_kv_heads": int(field(reader, f"{arch}.attention.head_count_kv")),
        "eps": float(field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        "theta": float(field(reader, f"{arch}.rope.freq_base")),
    }
    cfg["head_dim"] = cfg["hidden"] // cfg["n_heads"]
    tensors = {t.name: t for t in reader.tensors}

    def get(name):
        t = tensors[name]
        return dequantize(t.data, t.tensor_type).astype(np.float64)

    def unpermute(w, n_head):
        # llama.cpp's converter stores each head's rows as interleaved (x0, x_half, x1, ...)
        # pairs; Hugging Face order keeps the two rotary halves contiguous.
        rows, cols = w.shape
        return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)

    layers = []
    for i in range(cfg["n_layers"]):
        p = f"blk.{i}."
        layer = {
            "attn_norm": get(p + "attn_norm.weight"),
            "wq_gguf": get(p + "attn_q.weight"),
            "wk_gguf": get(p + "attn_k.weight"),
            "wv": get(p + "attn_v.weight"),
            "wo": get(p + "attn_output.weight"),
            "ffn_norm": get(p + "ffn_norm.weight"),
            "w_gate": get(p + "ffn_gate.weight"),
            "w_up": get(p + "ffn_up.weight"),
            "w_down": get(p + "ffn_down.weight"),
        }
        layer["wq"] = unpermute(layer["wq_gguf"], cfg["n_heads"])
        layer["wk"] = unpermute(layer["wk_gguf"], cfg["n_kv_heads"])
        for bias in ("q", "k", "v"):
            name = f"{p}attn_{bias}.bias"
            if name in tensors:
                b = get(name)
                if bias == "q":
                    b = unpermute(b[:, None], cfg["n_heads"])[:, 0]
                if bias == "k":
                    b = unpermute(b[:, None], cfg["n_kv_heads"])[:, 0]
                layer["b" + bias] = b
        layers.append(layer)
    embed = get("token_embd.weight")
    output = get("output.weight") if "output.weight" in tensors else embed
    return reader, cfg, {"embed": embed, "layers": layers, "norm": get("output_norm.weight"), "output": output}


# ---------------------------------------------------------------------------------------------
# Tokenizer: just enough byte-level BPE to build ASCII prompts without digits.


def byte_to_unicode():
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class Bpe:
    PIECE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")

    def __init__(self, reader):
        tokens = field(reader, "tokenizer.ggml.tokens")
        self.ids = {tok: i for i, tok in enumerate(tokens)}
        merges = field(reader, "tokenizer.ggml.merges")
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.bytes = byte_to_unicode()
        self.special = [t for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>") if t in self.ids]

    def encode_piece(self, piece):
        word = [self.bytes[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            word = word[:i] + [word[i] + word[i + 1]] + word[i + 2 :]
        return [self.ids[w] for w in word]

    def encode(self, text):
        if re.search(r"[0-9]|[^\x00-\x7f]", text):
            raise ValueError("this minimal tokenizer only handles ASCII text without digits")
        out = []
        pattern = "(" + "|".join(re.escape(s) for s in self.special) + ")"
        for part in re.split(pattern, text):
            if part in self.special:
                out.append(self.ids[part])
            elif part:
                for piece in self.PIECE.findall(part):
                    out.extend(self.encode_piece(piece))
        return out


def chatml(question):
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )


# ---------------------------------------------------------------------------------------------
# Forward pass (float64 throughout)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def llama3_scaled(inv_freq, scaling):
    """Llama 3.1 frequency bands: keep short wavelengths, stretch long ones by `factor`,
    interpolate between."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * np.pi / inv_freq
    stretched = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return np.where(medium, blended, stretched)


def rope_tables(positions, head_dim, theta, scaling=None):
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is not None:
        inv_freq = llama3_scaled(inv_freq, scaling)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles), np.sin(angles)


def rotate_half_rope(x, cos, sin):
    """x: [tokens, heads, head_dim] in Hugging Face order."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def interleaved_rope(x, cos, sin):
    """llama.cpp's rope on GGUF-order rows: rotates adjacent pairs (x0, x1), (x2, x3), ..."""
    a, b = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = b * c + a * s
    return out


class Model:
    def __init__(self, cfg, weights):
        self.cfg, self.w = cfg, weights

    def new_cache(self):
        return [{"k": None, "v": None} for _ in range(self.cfg["n_layers"])]

    def forward(self, token_ids, start_pos, cache):
        """Runs `token_ids` at positions start_pos.., extending `cache`; returns all logits."""
        c = self.cfg
        nh, nkv, hd = c["n_heads"], c["n_kv_heads"], c["head_dim"]
        n = len(token_ids)
        positions = np.arange(start_pos, start_pos + n)
        cos, sin = rope_tables(positions, hd, c["theta"], c.get("rope_scaling"))
        x = self.w["embed"][token_ids]
        for layer, kv in zip(self.w["layers"], cache):
            h = rms_norm(x, layer["attn_norm"], c["eps"])
            q = h @ layer["wq"].T + layer.get("bq", 0)
            k = h @ layer["wk"].T + layer.get("bk", 0)
            v = h @ layer["wv"].T + layer.get("bv", 0)
            q = rotate_half_rope(q.reshape(n, nh, hd), cos, sin)
            k = rotate_half_rope(k.reshape(n, nkv, hd), cos, sin)
            v = v.reshape(n, nkv, hd)
            kv["k"] = k if kv["k"] is None else np.concatenate([kv["k"], k])
            kv["v"] = v if kv["v"] is None else np.concatenate([kv["v"], v])
            total = kv["k"].shape[0]
            group = nh // nkv
            keys = np.repeat(kv["k"], group, axis=1)  # [total, nh, hd]
            values = np.repeat(kv["v"], group, axis=1)
            scores = np.einsum("qhd,khd->hqk", q, keys) / np.sqrt(hd)
            causal = positions[:, None] >= np.arange(total)[None, :]
            scores = np.where(causal[None], scores, -np.inf)
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            attn = np.einsum("hqk,khd->qhd", probs, values).reshape(n, nh * hd)
            x = x + attn @ layer["wo"].T
            h = rms_norm(x, layer["ffn_norm"], c["eps"])
            gate = h @ layer["w_gate"].T
            up = h @ layer["w_up"].T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ layer["w_down"].T
        return rms_norm(x, self.w["norm"], c["eps"]) @ self.w["output"].T


def check_unpermute(cfg, weights):
    """The un-permuted weights with rotate_half must equal llama.cpp's interleaved rope on the
    raw GGUF rows, up to the same permutation: guards the Q/K reordering."""
    layer = weights["layers"][0]
    nh, hd = cfg["n_heads"], cfg["head_dim"]
    x = np.random.default_rng(0).standard_normal((3, cfg["hidden"]))
    cos, sin = rope_tables([0, 5, 77], hd, cfg["theta"])
    hf = rotate_half_rope((x @ layer["wq"].T).reshape(3, nh, hd), cos, sin)
    cpp = interleaved_rope((x @ layer["wq_gguf"].T).reshape(3, nh, hd), cos, sin)
    cpp_in_hf_order = np.concatenate([cpp[..., 0::2], cpp[..., 1::2]], axis=-1)
    assert np.allclose(hf, cpp_in_hf_order, atol=1e-9), "Q/K un-permutation is wrong"


def f32_base64(values):
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def run_prompt(model, prompt_ids):
    cache = model.new_cache()
    logits = model.forward(prompt_ids, 0, cache)[-1]
    generated, margins, rows = [], [], {}
    for step in range(NUM_GENERATED):
        rows[step] = logits
        top2 = np.sort(logits)[-2:]
        margins.append(float(top2[1] - top2[0]))
        token = int(np.argmax(logits))
        generated.append(token)
        if step + 1 < NUM_GENERATED:
            logits = model.forward([token], len(prompt_ids) + step, cache)[-1]
    return generated, margins, rows


def main():
    model_path = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
        "~/.cache/stator/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    out_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "fixtures", "smollm2_greedy.json"
    )
    reader, cfg, weights = load_model(model_path)
    check_unpermute(cfg, weights)
    bpe = Bpe(reader)
    model = Model(cfg, weights)
    texts = [chatml(q) for q in CHAT_QUESTIONS] + RAW_TEXTS
    prompts = []
    for text in texts:
        ids = bpe.encode(text)
        greedy, margins, rows = run_prompt(model, ids)
        entry = {
            "text": text,
            "prompt_ids": ids,
            "greedy_ids": greedy,
            "top2_margins": [round(m, 6) for m in margins],
            "full_logits": [{"step": s, "f32_le_base64": f32_base64(rows[s])} for s in FULL_LOGIT_STEPS],
            "top_logits": [],
        }
        for s in TOP_LOGIT_STEPS:
            order = np.argsort(-rows[s], kind="stable")[:TOP_K]
            entry["top_logits"].append(
                {
                    "step": s,
                    "ids": [int(i) for i in order],
                    "values": [float(np.float32(rows[s][i])) for i in order],
                    "max_abs": float(np.abs(rows[s]).max()),
                }
            )
        continuation = "".join(bpe_token(reader, t) for t in greedy)
        print(f"{len(ids):4d} prompt tokens, min margin {min(margins):.4f}: {continuation!r}", file=sys.stderr)
        prompts.append(entry)
    fixture = {
        "model": os.path.basename(model_path),
        "generator": "tests/reference/reference.py (NumPy float64)",
        "num_generated": NUM_GENERATED,
        "prompts": prompts,
    }
    with open(out_path, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {out_path} ({os.path.getsize(out_path)} bytes)", file=sys.stderr)


_TOKEN_CACHE = {}


def bpe_token(reader, token_id):
    """Readable text of a token, for the progress log only."""
    if not _TOKEN_CACHE:
        inverse = {v: k for k, v in byte_to_unicode().items()}
        for i, tok in enumerate(field(reader, "tokenizer.ggml.tokens")):
            raw = bytes(inverse.get(ch, ord("?")) for ch in tok) if not tok.startswith("<|") else tok.encode()
            _TOKEN_CACHE[i] = raw.decode("utf-8", errors="replace")
    return _TOKEN_CACHE[token_id]


if __name__ == "__main__":
    main()
