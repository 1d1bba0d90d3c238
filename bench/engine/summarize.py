#!/usr/bin/env python3
"""Table of the engine benchmark (bench/engine/run.sh): stator vs llama.cpp, with ratios."""
import json
import sys
from pathlib import Path

results = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")


def summary(server, label):
    path = results / f"engine-{server}-{label}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["runs"][0]["summary"]


def pct(s, metric, q):
    m = s.get(metric) if s else None
    return m.get(q) if m else None


def fmt(v, unit=""):
    return "-" if v is None else f"{v:,.1f}{unit}"


def ratio(a, b, higher_is_better):
    if a is None or b is None or a == 0 or b == 0:
        return "-"
    r = a / b if higher_is_better else b / a
    return f"{r:.2f}x"


rows = []
for label in ["prefill", "c1", "c8", "c32"]:
    s, l = summary("stator", label), summary("llama.cpp", label)
    if label == "prefill":
        # Prefill tokens/s: prompt tokens over TTFT at concurrency 1.
        def prefill_rate(x):
            t = pct(x, "ttft_ms", "p50")
            return None if not x or not t else (x["prompt_tokens"] / max(x["succeeded"], 1)) / (t / 1000.0)
        rows.append(("prefill tok/s (512-token prompt, TTFT p50)", prefill_rate(s), prefill_rate(l), True))
        rows.append(("prefill TTFT p50 ms", pct(s, "ttft_ms", "p50"), pct(l, "ttft_ms", "p50"), False))
        continue
    c = label[1:]
    rows.append((f"c={c} output tok/s", s and s["output_token_throughput"], l and l["output_token_throughput"], True))
    for metric, q in [("ttft_ms", "p50"), ("ttft_ms", "p99"), ("itl_ms", "p50"), ("itl_ms", "p99")]:
        rows.append((f"c={c} {metric.replace('_ms', '')} {q} ms", pct(s, metric, q), pct(l, metric, q), False))

# A server that returns fewer tokens than forced is not doing the same work: say so.
for server in ["stator", "llama.cpp"]:
    for label in ["c1", "c8", "c32"]:
        x = summary(server, label)
        if x and x["output_tokens"] != 64 * x["succeeded"]:
            print(f"WARNING: {server} {label}: {x['output_tokens']} output tokens for {x['succeeded']} requests (expected {64 * x['succeeded']})")
print(f"{'figure':<44} {'stator':>12} {'llama.cpp':>12} {'stator advantage':>17}")
for name, a, b, hib in rows:
    print(f"{name:<44} {fmt(a):>12} {fmt(b):>12} {ratio(a, b, hib):>17}")
print("\n'stator advantage' > 1 means stator is better (higher throughput or lower latency).")
