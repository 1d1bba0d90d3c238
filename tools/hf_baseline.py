#!/usr/bin/env python3
"""PyTorch + Hugging Face transformers baseline for the CUDA backend benchmark.

Same shapes as gpu/examples/cuda_bench.rs: LlamaForCausalLM with the preset's config, random
weights, bf16, static KV cache; decode step time at batch 1 and 8 with 512 and 2048 context,
prefill of 1x2048 and 8x512. Timed with CUDA events (median). With --compare, prints stator's
figures from cuda_bench's JSON beside these as ratios.
"""
import argparse
import json
import statistics
import sys

import torch

PRESETS = {
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}


def median_ms(fn, warmup=2, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def make_cache(transformers, model, batch, max_len):
    from transformers import StaticCache
    for kwargs in (dict(config=model.config, max_cache_len=max_len),
                   dict(config=model.config, max_batch_size=batch, max_cache_len=max_len, device="cuda",
                        dtype=torch.bfloat16)):
        try:
            return StaticCache(**kwargs)
        except TypeError:
            continue
    raise RuntimeError("cannot construct StaticCache with this transformers version")


def run_model(name, decode_batches, contexts, prefills):
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**PRESETS[name], rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=ROPE_SCALING,
                      max_position_embeddings=131072, attention_bias=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = LlamaForCausalLM(cfg).eval()
        torch.set_default_dtype(torch.float32)
    results = []
    with torch.inference_mode():
        for ctx in contexts:
            for batch in decode_batches:
                # Recent StaticCache layers append at their own running length, so leave room for
                # the warm-up and timed steps after the prompt.
                cache = make_cache(transformers, model, batch, ctx + 64)
                ids = torch.randint(0, cfg.vocab_size, (batch, ctx - 1), device="cuda")
                model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(ctx - 1, device="cuda"),
                      use_cache=True)
                step = torch.randint(0, cfg.vocab_size, (batch, 1), device="cuda")
                pos = torch.tensor([ctx - 1], device="cuda")

                def decode():
                    model(input_ids=step, past_key_values=cache, cache_position=pos, use_cache=True)
                ms = median_ms(decode, warmup=3, reps=15)
                print(f"hf {name} decode b{batch} ctx{ctx}: {ms:.3f} ms/step", flush=True)
                results.append(dict(model=name, kind="decode", batch=batch, context=ctx, step_ms=ms))
                del cache
                torch.cuda.empty_cache()
        for seqs, length in prefills:
            ids = torch.randint(0, cfg.vocab_size, (seqs, length), device="cuda")
            positions = torch.arange(length, device="cuda")

            def prefill():
                # A fresh static cache per prompt (its buffers come from PyTorch's caching
                # allocator after the first run, so this adds only the zero fill).
                cache = make_cache(transformers, model, seqs, length + 16)
                model(input_ids=ids, past_key_values=cache, cache_position=positions, use_cache=True,
                      logits_to_keep=1)
            ms = median_ms(prefill, warmup=2, reps=5)
            print(f"hf {name} prefill {seqs}x{length}: {ms:.2f} ms", flush=True)
            results.append(dict(model=name, kind="prefill", sequences=seqs, length=length, ms=ms))
            torch.cuda.empty_cache()
    del model
    torch.cuda.empty_cache()
    return results


def compare(ours_path, hf):
    with open(ours_path) as f:
        ours = json.load(f)["results"]
    print("\n=== stator CUDA vs HF transformers (same device, same shapes) ===")
    print(f"{'model':<14} {'shape':<20} {'stator ms':>10} {'HF ms':>10} {'speed-up':>9}")
    for h in hf:
        if h["kind"] == "decode":
            key = ("decode", h["batch"], h["context"])
            match = [o for o in ours if o.get("model") == h["model"] and o["kind"] == "decode"
                     and (o["batch"], o["context"]) == key[1:]]
            shape, hf_ms = f"decode b{h['batch']} ctx{h['context']}", h["step_ms"]
            our_ms = match[0]["step_ms"] if match else None
        else:
            match = [o for o in ours if o.get("model") == h["model"] and o["kind"] == "prefill"
                     and (o["sequences"], o["length"]) == (h["sequences"], h["length"])]
            shape, hf_ms = f"prefill {h['sequences']}x{h['length']}", h["ms"]
            our_ms = match[0]["ms"] if match else None
        if our_ms is None:
            print(f"{h['model']:<14} {shape:<20} {'-':>10} {hf_ms:10.3f} {'-':>9}")
        else:
            print(f"{h['model']:<14} {shape:<20} {our_ms:10.3f} {hf_ms:10.3f} {hf_ms / our_ms:8.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="llama-3.2-1b,llama-3.1-8b")
    ap.add_argument("--out")
    ap.add_argument("--compare", help="cuda_bench JSON to put side by side")
    ap.add_argument("--merge", nargs="*", help="earlier --out files to compare instead of running")
    args = ap.parse_args()
    if args.merge is not None:
        results = []
        for path in args.merge:
            with open(path) as f:
                results += json.load(f)["results"]
        if args.compare:
            compare(args.compare, results)
        return
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
    results = []
    for name in args.models.split(","):
        try:
            results += run_model(name, decode_batches=[1, 8], contexts=[512, 2048], prefills=[(1, 2048), (8, 512)])
        except Exception as e:  # report and go on with the next model
            print(f"hf baseline for {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                           transformers=transformers.__version__, results=results), f, indent=2)
    if args.compare:
        compare(args.compare, results)


if __name__ == "__main__":
    main()
