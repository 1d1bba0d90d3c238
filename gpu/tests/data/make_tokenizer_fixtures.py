#!/usr/bin/env python3
"""Writes tokenizer_smollm2.json: token ids that Hugging Face `tokenizers` gives for varied
strings with SmolLM2's tokenizer, the reference for stator's GGUF-built tokenizer.

The vocabulary and merges come from the SmolLM2-135M-Instruct GGUF (tools/fetch-model.sh);
the pipeline is SmolLM2's tokenizer.json: no normalizer, pre-tokenizer
Sequence[Digits(individual_digits), ByteLevel(add_prefix_space=False, use_regex=True)],
BPE, ByteLevel decoder, control tokens as special added tokens. stator builds the same
tokenizer differently (llama.cpp's `smollm` split regexes), so agreement is a real check.

Run from this directory:  python3 make_tokenizer_fixtures.py [path/to/model.gguf]
(needs: pip install gguf numpy tokenizers==0.21.4)
"""
import json
import os
import sys

from gguf import GGUFReader
from tokenizers import Tokenizer, AddedToken, decoders, pre_tokenizers
from tokenizers.models import BPE

default = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
    "stator/models/SmolLM2-135M-Instruct.Q4_1.gguf",
)
path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("STATOR_MODEL_DIR", None)
if path and os.path.isdir(path):
    path = os.path.join(path, "SmolLM2-135M-Instruct.Q4_1.gguf")
path = path or default

r = GGUFReader(path)
tokens = r.fields["tokenizer.ggml.tokens"].contents()
types = r.fields["tokenizer.ggml.token_type"].contents()
merges = [tuple(m.split(" ", 1)) for m in r.fields["tokenizer.ggml.merges"].contents()]
vocab = {t: i for i, t in enumerate(tokens)}

tok = Tokenizer(BPE(vocab=vocab, merges=merges))
tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ]
)
tok.decoder = decoders.ByteLevel()
tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == 3])

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
    "numbers 1234567890 and 3.14159 and -42",
    "year2024 x1y2z3",
    "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "I'm sure they've said we'll do it, it's John's.",
    "UPPER lower MiXeD CamelCaseWord snake_case_word",
    "Ünïcödé çàfé naïve — “quotes” ‘single’ …",
    "日本語のテキストと中文文本",
    "Привет, мир! Γειά σου κόσμε",
    "emoji 🙂👍🏽🚀 family 👨‍👩‍👧‍👦 flags 🇫🇷",
    "math ∑ x² ≤ ∞ ± √2",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "special inline <|endoftext|> and fake <|im_startx|>",
    "https://example.com/path?query=1&b=2#frag",
    "email: someone@example.org, phone +1 (555) 010-9999",
    "     ",
    "a\u00a0b\u2003c",
    "repeated !!!??? ... ---- ====",
    "mixed123abc456 0x1F 1e-9",
    "",
]

cases = [{"text": t, "ids": tok.encode(t).ids} for t in TEXTS]
for c in cases:
    assert tok.decode(c["ids"], skip_special_tokens=False) == c["text"], c
with open("tokenizer_smollm2.json", "w", encoding="utf-8") as f:
    lines = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
    f.write('{"model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",\n'
            ' "cases": [\n' + lines + "\n]}\n")
print(f"wrote {len(cases)} cases to tokenizer_smollm2.json")
