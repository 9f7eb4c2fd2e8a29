"""Recorded latency rows priced again by this checkout's analyzer and profiles (no private run).

    python benchmarks/latency_repredict.py --rows benchmarks/results/latency.jsonl
    python benchmarks/latency_repredict.py --rows /tmp/spu_check.jsonl --by-op

A profile refit (e.g. SPU's matrix products, ``targets/spu/compute_parts.py``) changes what the analyzer
predicts, not what was measured: this prints each recorded graph's measured seconds against the prediction
the rows recorded and the one this code makes now, with both errors. ``--by-op``: the new prediction's
compute per op kind for the baseline graph.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from latency import ENGINES, graphs_of  # a sibling module: these run as python benchmarks/NAME.py


def repredict(row: dict, graphs: dict) -> dict[str, dict]:
    """Each graph of ``row``: measured, recorded prediction, this code's prediction (seconds, compute, by op)."""
    from aero_compile.cost import analyze
    from aero_compile.cost.latency import run_network

    profile, provider = ENGINES[row["engine"]]
    out = {}
    for name, figures in row["graphs"].items():
        report = analyze(graphs[name], profile, run_network(row.get("link")), seq_len=row["seq_len"], provider=provider)
        out[name] = {"seconds": figures["seconds"], "recorded_s": figures["predicted_s"], "now_s": report.latency_s,
                     "now_compute_s": report.compute_s,
                     "by_op": {str(kind): cost.latency_s or 0.0
                               for kind, cost in report.by_op.items()}}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, required=True, help="JSONL of rows benchmarks/latency.py wrote")
    parser.add_argument("--by-op", action="store_true", help="print the baseline graph's predicted compute per op kind")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
    graphs, recorded, now = {}, [], []
    for row in rows:
        if row["model"] not in graphs:
            graphs[row["model"]] = graphs_of(row["model"])
        result = repredict(row, graphs[row["model"]])
        cells = []
        for name, g in result.items():
            recorded.append(g["recorded_s"] / g["seconds"] - 1)
            now.append(g["now_s"] / g["seconds"] - 1)
            cells.append(f"{name} {g['seconds']:.2f} s: recorded {g['recorded_s']:.2f} ({recorded[-1]:+.0%}), "
                         f"now {g['now_s']:.2f} ({now[-1]:+.0%})")
        print(f"{row['engine']} {row['model']} T={row['seq_len']} {row['network']}: " + "; ".join(cells))
        if args.by_op:
            print("   baseline predicted seconds by op kind: " + ", ".join(
                f"{kind} {s:.2f}" for kind, s in sorted(result["baseline"]["by_op"].items(), key=lambda x: -x[1])))
    if now:
        print(f"over {len(now)} graphs: recorded median |error| {statistics.median(map(abs, recorded)):.0%} "
              f"(worst {max(recorded, key=abs):+.0%}); now median {statistics.median(map(abs, now)):.0%} "
              f"(worst {max(now, key=abs):+.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
