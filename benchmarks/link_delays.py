"""Measure how many one-way link delays a private run waits per counted round (or message), and the bandwidth term.

Runs the same private forward pass on bare loopback and under emulated links, then fits the extra seconds
against (counted rounds or messages) x one-way delay; the low-bandwidth links check bytes / bandwidth.

    python benchmarks/link_delays.py --engine crypten-tfp --links 1000/10 1000/40 100/2 20/2
    python benchmarks/link_delays.py --engine crypten-ttp --links 1000/10 1000/40
    python benchmarks/link_delays.py --engine spu-cheetah --links 1000/10 1000/40 100/2
    python benchmarks/link_delays.py --show                  # the fits of the rows recorded

Rows go to ``benchmarks/results/link_delays.jsonl`` (one per run; ``--trials`` runs of each link,
each run itself the median of 3 forward passes). The graph: gpt2-tiny after ``--passes all``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "link_delays.jsonl"
WIRE = 0.5  # both profiles: one direction carries half the counted bytes


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _graph(model: str, passes: str):
    import aero_compile as ac
    from aero_compile.pass_manager import PassManager

    return PassManager.from_pipeline(passes).run(ac.capture(model)).graph_module


def _run(engine: str, gm, seq_len: int, link):
    if engine.startswith("crypten"):
        from aero_compile.targets.crypten.runner import run_private

        record = run_private({"g": gm}, seq_len=seq_len, provider=engine.split("-")[1], timeout_s=600, link=link)["g"]
        return {"counted": record["rounds"], "owner_rounds": record["owner_rounds"], "bytes": record["bytes"],
                "seconds": record["seconds"], "all_seconds": record["timing"]["all_seconds"]}
    from aero_compile.targets.spu.runner import run_private

    record = run_private({"g": gm}, seq_len=seq_len, protocol="cheetah", mode="processes", timeout_s=600,
                         link=link)["g"]
    return {"counted": record["rounds"], "bytes": record["bytes"], "seconds": record["seconds"],
            "all_seconds": record["timing"]["all_seconds"]}


def measure(args) -> None:
    from aero_compile.targets.private.link.spec import LinkSpec

    gm = _graph(args.model, args.passes)
    args.out.parent.mkdir(exist_ok=True)
    links = [None] + [LinkSpec(*map(float, text.split("/"))) for text in args.links]
    for trial in range(args.trials):
        for link in links:
            load = os.getloadavg()[0]
            row = _run(args.engine, gm, args.seq_len, link)
            row.update(engine=args.engine, model=args.model, passes=args.passes, seq_len=args.seq_len, trial=trial,
                       bandwidth_mbps=link.bandwidth_mbps if link else None, rtt_ms=link.rtt_ms if link else 0.0,
                       load_average_1min=round(load, 2), load_average_1min_at_end=round(os.getloadavg()[0], 2),
                       cpu=_cpu(), cores=os.cpu_count(), date=time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
                       command="python " + " ".join(sys.argv))
            with open(args.out, "a") as out:
                out.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("engine", "bandwidth_mbps", "rtt_ms", "counted", "seconds",
                                                  "load_average_1min")}), flush=True)


def fit(rows: list[dict]) -> dict:
    """Delays per counted unit from the rows of one engine: extra seconds over loopback (median per link)
    minus the bandwidth term, against counted x one-way delay (least squares through the origin)."""
    by_link: dict = {}
    for row in rows:
        by_link.setdefault((row["bandwidth_mbps"], row["rtt_ms"]), []).append(row)
    base = statistics.median(r["seconds"] for r in by_link.pop((None, 0.0)))
    points, table = [], []
    for (bandwidth, rtt), group in sorted(by_link.items(), key=lambda kv: (kv[0][1], -kv[0][0])):
        seconds = statistics.median(r["seconds"] for r in group)
        counted = statistics.median(r["counted"] for r in group)
        transfer = statistics.median(r["bytes"] for r in group) * WIRE * 8 / (bandwidth * 1e6)
        delay = rtt / 2000
        extra = seconds - base
        table.append({"link": f"{bandwidth:g}/{rtt:g}", "runs": len(group), "seconds": round(seconds, 3),
                      "extra_s": round(extra, 3), "counted": counted, "transfer_s": round(transfer, 3),
                      "delays_per_counted": round((extra - transfer) / (counted * delay), 3) if delay else None})
        if rtt > 0:
            points.append((counted * delay, counted, extra - transfer))
    result = {"loopback_s": round(base, 3), "links": table, "delays_per_counted": None, "link_s_per_counted": None}
    if len({x for x, _, _ in points}) >= 2:
        # a line in the delay with an intercept per counted unit: what a round through a link costs beyond its
        # delays (the far end's wake-up from idle, the emulator's hop), which loopback's compute does not hold
        matrix = np.array([[x, c] for x, c, _ in points])
        (slope, per_counted), *_ = np.linalg.lstsq(matrix, np.array([y for _, _, y in points]), rcond=None)
        result.update(delays_per_counted=round(float(slope), 3), link_s_per_counted=round(float(per_counted), 6))
    return result


def show(path: Path = RESULTS) -> None:
    rows = [json.loads(line) for line in open(path)]
    for engine in sorted({r["engine"] for r in rows}):
        mine = [r for r in rows if r["engine"] == engine]
        result = fit(mine)
        load = [r["load_average_1min"] for r in mine]
        print(f"{engine}: loopback {result['loopback_s']} s, fitted one-way delays per counted "
              f"{'message' if engine.startswith('spu') else 'round'}: {result['delays_per_counted']} "
              f"+ {result['link_s_per_counted']} s each "
              f"(load average {min(load)}-{max(load)}, {len(mine)} runs)")
        for line in result["links"]:
            print("   ", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["crypten-tfp", "crypten-ttp", "spu-cheetah"])
    parser.add_argument("--links", nargs="*", default=["1000/10", "1000/40"], help="BANDWIDTH_MBPS/RTT_MS each")
    parser.add_argument("--model", default="gpt2-tiny")
    parser.add_argument("--passes", default="all")
    parser.add_argument("--seq-len", type=int, default=8)
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--show", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSONL of rows (default {RESULTS.name})")
    args = parser.parse_args()
    if args.show:
        show(args.out)
    else:
        measure(args)


if __name__ == "__main__":
    main()
