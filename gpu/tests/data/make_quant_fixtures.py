#!/usr/bin/env python3
"""Writes quants.gguf: the reference for stator's GGUF parser and dequantizers.

For each ggml type T it holds `q.T` (random blocks, quantized bytes) and `expected.T` (F32:
what the Python `gguf` package's dequantizer makes of them), plus metadata of every value
type. Run from this directory:  python3 make_quant_fixtures.py   (needs: pip install gguf numpy)
"""
import numpy as np
from gguf import GGUFWriter, GGMLQuantizationType as T, GGML_QUANT_SIZES
from gguf.quants import dequantize

rng = np.random.default_rng(1234)

# Byte offsets of the f16 scale fields in one block; random bits there would be NaN/inf.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
ROWS = 3

w = GGUFWriter("quants.gguf", "llama")
# One entry of each metadata value type, and arrays (nested too).
w.add_uint8("test.u8", 200)
w.add_int8("test.i8", -100)
w.add_uint16("test.u16", 60000)
w.add_int16("test.i16", -30000)
w.add_uint32("test.u32", 4000000000)
w.add_int32("test.i32", -2000000000)
w.add_float32("test.f32", 1.5)
w.add_uint64("test.u64", 1 << 40)
w.add_int64("test.i64", -(1 << 40))
w.add_float64("test.f64", -2.25)
w.add_bool("test.bool", True)
w.add_string("test.string", "héllo ✓")
w.add_array("test.int_array", [1, 2, 3])
w.add_array("test.str_array", ["a", "", "ü"])
w.add_array("test.nested", [[1, 2], [3]])

for qtype in [T.F16, T.BF16] + list(F16_FIELDS):
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    cols = max(block, 64)
    if qtype == T.F16:
        raw = rng.normal(size=(ROWS, cols)).astype(np.float16).view(np.uint8)
    elif qtype == T.BF16:
        f = rng.normal(size=(ROWS, cols)).astype(np.float32)
        raw = (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(ROWS, -1)
    else:
        raw = rng.integers(0, 256, size=(ROWS, cols // block, block_bytes), dtype=np.uint8)
        for off in F16_FIELDS[qtype]:
            scale = rng.uniform(-0.5, 0.5, size=(ROWS, cols // block)).astype(np.float16)
            raw[:, :, off:off + 2] = scale.view(np.uint8).reshape(ROWS, cols // block, 2)
        raw = raw.reshape(ROWS, -1)
    expected = dequantize(raw, qtype).astype(np.float32)
    assert expected.shape == (ROWS, cols), (qtype, expected.shape)
    w.add_tensor(f"q.{qtype.name}", raw, raw_dtype=qtype)
    w.add_tensor(f"expected.{qtype.name}", expected)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("wrote quants.gguf")
