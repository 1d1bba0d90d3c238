#!/usr/bin/env python3
"""The frontend's added latency with the engine's share made small: a 1-token prompt, 3 output
tokens, one request at a time, alternating between the worker peer's own API (its engine,
no lease) and a `--role frontend` peer (route + lease grant + QUIC stream to that worker).
Prints TTFT and end-to-end percentiles for both and their differences; writes JSON.

usage: overhead.py DIRECT_URL FRONTEND_URL OUT.json [ROUNDS] [PER_ROUND]"""
import http.client, json, statistics, sys, time, urllib.parse

def one(url):
    u = urllib.parse.urlparse(url)
    body = json.dumps({"model": "SmolLM2-135M-Instruct", "prompt": "Hi", "max_tokens": 3,
                       "temperature": 0, "stream": True, "ignore_eos": True})
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    t = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"{url}: HTTP {r.status}: {r.read()[:200]}")
    first = None
    while True:
        line = r.fp.readline()
        if not line or b"[DONE]" in line:
            break
        if first is None and line.startswith(b"data:") and b'"text"' in line:
            first = time.perf_counter() - t
    total = time.perf_counter() - t
    c.close()
    return first * 1e3, total * 1e3

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]

direct, front, out = sys.argv[1], sys.argv[2], sys.argv[3]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 10
per = int(sys.argv[5]) if len(sys.argv) > 5 else 30
for url in (direct, front):  # warm both paths
    for _ in range(5):
        one(url)
samples = {"direct": [], "frontend": []}
for _ in range(rounds):
    for name, url in (("direct", direct), ("frontend", front)):
        samples[name] += [one(url) for _ in range(per)]
rows = {}
for name, s in samples.items():
    ttft = [a for a, _ in s]; e2e = [b for _, b in s]
    rows[name] = {"n": len(s), **{f"ttft_p{q}_ms": pct(ttft, q) for q in (50, 90, 99)},
                  **{f"e2e_p{q}_ms": pct(e2e, q) for q in (50, 99)}}
print(f"{'':10} {'n':>5} {'TTFT p50':>9} {'p90':>7} {'p99':>7} {'e2e p50':>8} {'p99':>7}  (ms)")
for name, r in rows.items():
    print(f"{name:10} {r['n']:5} {r['ttft_p50_ms']:9.2f} {r['ttft_p90_ms']:7.2f} {r['ttft_p99_ms']:7.2f} {r['e2e_p50_ms']:8.2f} {r['e2e_p99_ms']:7.2f}")
diff = {k: rows["frontend"][k] - rows["direct"][k] for k in rows["direct"] if k != "n"}
print("added by the frontend: " + ", ".join(f"{k} {v:+.2f}" for k, v in diff.items()))
json.dump({"benchmark": "frontend added latency, 1-token prompt", "command": " ".join(sys.argv),
           "rows": rows, "added_ms": diff, "samples": samples}, open(out, "w"), indent=1)
