#!/usr/bin/env python3
"""Summarises tools/multigpu-bench.sh's work folder: one row per replay (layout, trace, time
scale) with goodput under TTFT <= 500 ms and ITL <= 50 ms, TTFT/ITL p50/p99, the disagg/agg
goodput ratio, the KV-transfer path's counters from the peers' /metrics (deltas over the run),
and the failover results. Writes OUT/multigpu.json and prints a table.

usage: summary.py WORK OUT NOTE
"""
import glob
import json
import os
import re
import sys

SLO_TTFT_MS = 500.0
SLO_ITL_MS = 50.0
METRIC = re.compile(r"^peer(\d+) (\w+)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$")


def read_metrics(path):
    """{(peer, name, labels): value} from a metrics snapshot file."""
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        m = METRIC.match(line.strip())
        if m:
            out[(int(m.group(1)), m.group(2), m.group(3) or "")] = float(m.group(4))
    return out


def delta(before, after, name, labels_contain=""):
    """Sum over peers of a counter's growth during the run."""
    total = 0.0
    for (peer, n, labels), v in after.items():
        if n == name and labels_contain in labels:
            total += v - before.get((peer, n, labels), 0.0)
    return total


def goodput(summary):
    """stator-bench's own goodput (run with --slo-ttft 500 --slo-itl 50): rate and attainment."""
    g = summary.get("goodput") or {}
    return g.get("requests_per_s"), g.get("attainment")


def row_for(work, path):
    tag = os.path.basename(path)[len("bench-"):-len(".json")]
    report = json.load(open(path))
    run = report["runs"][0]
    s = run["summary"]
    q = lambda k, p: (s.get(k) or {}).get(p)
    gp, attainment = goodput(s)
    # A request's worst gap between tokens: its stall when its worker died under it.
    stalls = sorted((x.get("itl_ms") or {}).get("max") or 0.0 for x in run.get("samples") or [])
    pct = lambda p: stalls[min(len(stalls) - 1, int(p * len(stalls)))] if stalls else None
    before = read_metrics(os.path.join(work, f"metrics-{tag}-before.txt"))
    after = read_metrics(os.path.join(work, f"metrics-{tag}-after.txt"))
    kv_bytes = delta(before, after, "stator_kv_transfer_bytes_total", 'direction="received"')
    kv_s_sum = delta(before, after, "stator_kv_transfer_seconds_sum")
    kv_count = delta(before, after, "stator_kv_transfer_seconds_count")
    remote = delta(before, after, "stator_prefill_total", 'where="remote"')
    local = delta(before, after, "stator_prefill_total", 'where="local"')
    ttft_mean = q("ttft_ms", "mean")
    kv_mean_ms = 1000 * kv_s_sum / kv_count if kv_count else None
    return {
        "tag": tag,
        "requests": s["requests"],
        "succeeded": s["succeeded"],
        "errors": s.get("errors_by_kind"),
        "duration_s": s.get("duration_s"),
        "request_throughput": s.get("request_throughput"),
        "output_token_throughput": s.get("output_token_throughput"),
        "goodput_rps": gp,
        "slo_attainment": attainment,
        "ttft_ms_p50": q("ttft_ms", "p50"),
        "ttft_ms_p99": q("ttft_ms", "p99"),
        "ttft_ms_mean": ttft_mean,
        "itl_ms_p50": q("itl_ms", "p50"),
        "itl_ms_p99": q("itl_ms", "p99"),
        "itl_ms_max": q("itl_ms", "max"),
        "tpot_ms_p99": q("tpot_ms", "p99"),
        "request_max_itl_ms_p50": pct(0.5),
        "request_max_itl_ms_p99": pct(0.99),
        "prefill_remote": remote,
        "prefill_local": local,
        "kv_bytes_received": kv_bytes,
        "kv_bytes_per_s": kv_bytes / s["duration_s"] if s.get("duration_s") else None,
        "kv_transfers": kv_count,
        "kv_transfer_ms_mean": kv_mean_ms,
        "kv_share_of_ttft": (kv_mean_ms / ttft_mean) if kv_mean_ms and ttft_mean else None,
    }


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def main():
    work, out, note = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = [row_for(work, p) for p in sorted(glob.glob(os.path.join(work, "bench-*.json")))]
    by_tag = {r["tag"]: r for r in rows}
    for r in rows:
        if r["tag"].startswith("disagg-") and "failover" not in r["tag"]:
            agg = by_tag.get("agg-" + r["tag"][len("disagg-"):])
            if agg and agg["goodput_rps"]:
                r["goodput_ratio_vs_agg"] = r["goodput_rps"] / agg["goodput_rps"]
    failovers = {}
    for p in glob.glob(os.path.join(work, "failover-*.json")):
        try:
            failovers[os.path.basename(p)[len("failover-"):-len(".json")]] = json.load(open(p))
        except ValueError:
            failovers[os.path.basename(p)] = {"error": open(p).read()}
    result = {"note": note, "slo": {"ttft_ms": SLO_TTFT_MS, "itl_ms": SLO_ITL_MS}, "runs": rows,
              "failover": failovers}
    json.dump(result, open(os.path.join(out, "multigpu.json"), "w"), indent=1)

    print("\n################ MULTIGPU SUMMARY ################")
    print(note)
    print(f"{'run':<26} {'ok':>9} {'req/s':>6} {'goodput':>7} {'att':>4} {'ratio':>5} {'TTFT p50':>8} {'p99':>7} "
          f"{'ITL p50':>7} {'p99':>6} {'max':>7} {'remote':>6} {'KV MB/s':>7} {'KV ms':>6} {'KV/TTFT':>7}")
    for r in rows:
        print(f"{r['tag']:<26} {r['succeeded']:>4}/{r['requests']:<4} {fmt(r['request_throughput'], '6.2f')} "
              f"{fmt(r['goodput_rps'], '7.2f')} {fmt(r['slo_attainment'], '4.2f')} {fmt(r.get('goodput_ratio_vs_agg'), '5.2f')} "
              f"{fmt(r['ttft_ms_p50'], '8.1f')} {fmt(r['ttft_ms_p99'], '7.1f')} {fmt(r['itl_ms_p50'], '7.2f')} "
              f"{fmt(r['itl_ms_p99'], '6.1f')} {fmt(r['itl_ms_max'], '7.1f')} {fmt(r['prefill_remote'], '6.0f')} "
              f"{fmt(r['kv_bytes_per_s'] / 1e6 if r['kv_bytes_per_s'] is not None else None, '7.1f')} "
              f"{fmt(r['kv_transfer_ms_mean'], '6.1f')} {fmt(r['kv_share_of_ttft'], '7.2f')}")
    for tag, f in sorted(failovers.items()):
        print(f"failover {tag}: {json.dumps(f)}")
    print("(goodput: requests/s meeting TTFT <= 500 ms and TPOT <= 50 ms; att: share of requests meeting both; ratio: disagg/agg goodput;"
          " remote: prefills done on the prefill peer; KV ms: mean transfer time)")


if __name__ == "__main__":
    main()
