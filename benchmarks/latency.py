"""Measured vs predicted latency of a private forward pass: CrypTen (tfp, ttp) and SPU cheetah, per link.

    python benchmarks/latency.py                                  # every row of the issue (resumes)
    python benchmarks/latency.py --networks loopback --engines crypten-tfp spu-cheetah \\
        --models gpt2-tiny --seq-lens 32                          # the bare-loopback rows only
    python benchmarks/latency.py --show                           # print the table of the rows recorded

Each row runs three graphs of one model in one private run (same tokens, same parties): the baseline,
``all`` and ``all,softmax-to-quad{norm=length},fold-scales``. ``seconds`` is the engine's online forward
pass, median of 3 repetitions on the same shares; ``predicted`` is the cost analyzer's latency for the
same graph, engine profile and link (``aero_compile/cost/latency.py``). Rows are appended to a JSONL
file (``--out``) as they finish and skipped when present, so an interrupted run resumes. ``lan`` is
1 Gbit/s at 1 ms RTT and ``wan`` 100 Mbit/s at 80 ms, both through the emulated link between the
parties (docs/link.md); ``loopback`` is the bare machine.

    python benchmarks/latency.py --plan                           # each pending row's predicted wall-clock

``--plan`` runs nothing: it prices each pending row's passes (3 a graph) with the analyzer and prints the
predicted hours, so the rows can be chosen to fit the time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

from resumable_rows import read_rows  # a sibling module: these run as python benchmarks/NAME.py

ENGINES = {"crypten-tfp": ("crypten", "tfp"), "crypten-ttp": ("crypten", "ttp"), "spu-cheetah": ("spu-cheetah", None)}
MODELS = ["gpt2-tiny", "gpt2{n_layer=4,n_embd=256,n_head=4,vocab_size=2048}"]
SEQ_LENS = {"crypten": [32, 64, 128], "spu-cheetah": [32, 64]}
PIPELINES = {"baseline": None, "all": "all", "best": "all,softmax-to-quad{norm=length},fold-scales"}
NETWORKS = {"loopback": None, "lan": {"bandwidth_mbps": 1000.0, "rtt_ms": 1.0},
            "wan": {"bandwidth_mbps": 100.0, "rtt_ms": 80.0}}
DEFAULT_OUT = Path(__file__).parent / "results" / "latency.jsonl"


def row_key(engine: str, model: str, seq_len: int, network: str) -> str:
    return f"{engine}|{model}|T={seq_len}|{network}"


def graphs_of(model: str) -> dict:
    import aero_compile as ac

    base = ac.capture(ac.load_model(model))
    return {name: base if pipeline is None else ac.PassManager.from_pipeline(pipeline).run(base).graph_module
            for name, pipeline in PIPELINES.items()}


def run_row(engine: str, model: str, seq_len: int, network: str, graphs: dict) -> dict:
    """Measure one row."""
    from aero_compile.cost import analyze
    from aero_compile.cost.latency import run_network

    profile, provider = ENGINES[engine]
    link = NETWORKS[network]
    if profile == "crypten":
        from aero_compile.targets.crypten.runner import run_private

        options = {"provider": provider, "timeout_s": 900}
    else:
        from aero_compile.targets.spu.runner import run_private

        options = {"protocol": "cheetah", "mode": "processes", "timeout_s": 900}
    if link is not None:
        from aero_compile.targets.private.link.spec import LinkSpec

        options["link"] = LinkSpec(**link)
    started = time.perf_counter()
    measured = run_private(graphs, seq_len=seq_len, **options)
    wall = time.perf_counter() - started
    record_link = {**link, "emulated": True} if link else None
    figures = {}
    for name, gm in graphs.items():
        m = measured[name]
        report = analyze(gm, profile, run_network(m.get("link", record_link)), seq_len=seq_len, provider=provider)
        figures[name] = {"seconds": m["seconds"], "timing": m.get("timing"), "predicted_s": round(report.latency_s, 4),
                         "predicted_compute_s": round(report.compute_s, 4), "rounds": m["rounds"], "bytes": m["bytes"],
                         "predicted_rounds": report.rounds, "predicted_bytes": report.bytes,
                         "error": round(report.latency_s / m["seconds"] - 1, 4)}
    base = figures["baseline"]["seconds"]
    return {"key": row_key(engine, model, seq_len, network), "engine": engine, "model": model, "seq_len": seq_len,
            "network": network, "link": record_link, "graphs": figures,
            "ratio_all": round(base / figures["all"]["seconds"], 3), "ratio_best": round(base / figures["best"]["seconds"], 3),
            "predicted_ratio_all": round(figures["baseline"]["predicted_s"] / figures["all"]["predicted_s"], 3),
            "predicted_ratio_best": round(figures["baseline"]["predicted_s"] / figures["best"]["predicted_s"], 3),
            "wall_s": round(wall, 1), "load_average_1min": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())}


PASSES_PER_GRAPH = 3  # the runners' DEFAULT_REPETITIONS: every pass a row makes is timed


def planned_seconds(engine: str, seq_len: int, network: str, graphs: dict) -> float:
    """The analyzer's online seconds for every pass a row makes: what it will take, setup and sharing aside."""
    from aero_compile.cost import analyze
    from aero_compile.cost.latency import run_network

    profile, provider = ENGINES[engine]
    link = NETWORKS[network]
    network_record = run_network({**link, "emulated": True} if link else None)
    return PASSES_PER_GRAPH * sum(analyze(gm, profile, network_record, seq_len=seq_len, provider=provider).latency_s
                                  for gm in graphs.values())


def markdown(rows: dict[str, dict]) -> None:
    """The table as Markdown, for benchmarks/README.md: measured (predicted) error per graph, measured ratios."""
    print("| engine | model | T | link | baseline s (pred) err | `all` s (pred) err | best s (pred) err "
          "| measured `all` x | measured best x |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in sorted(rows.values(), key=lambda r: (r["engine"], r["network"], r["model"], r["seq_len"])):
        cells = [f"{g['seconds']:.3f} ({g['predicted_s']:.3f}) {g['error']:+.0%}"
                 for g in (row["graphs"][name] for name in PIPELINES)]
        print(f"| {row['engine']} | `{row['model']}` | {row['seq_len']} | {row['network']} | " + " | ".join(cells)
              + f" | {row['ratio_all']:.2f} | {row['ratio_best']:.2f} |")


def show(rows: dict[str, dict]) -> None:
    """The table: measured vs predicted seconds per graph with the error, the measured ratios."""
    header = f"{'engine':<12} {'model':<48} {'T':>4} {'network':<8} | " + " | ".join(
        f"{name + ' s (pred)':>22}" for name in PIPELINES) + f" | {'all x':>6} {'best x':>6} | load"
    print(header)
    print("-" * len(header))
    errors = []
    for row in rows.values():
        cells = []
        for name in PIPELINES:
            g = row["graphs"][name]
            errors.append(g["error"])
            cells.append(f"{g['seconds']:>7.2f} ({g['predicted_s']:>6.2f}) {g['error']:>+5.0%}")
        print(f"{row['engine']:<12} {row['model']:<48} {row['seq_len']:>4} {row['network']:<8} | " + " | ".join(
            f"{c:>22}" for c in cells) + f" | {row['ratio_all']:>6.2f} {row['ratio_best']:>6.2f} | {row['load_average_1min']}")
    if errors:
        print(f"prediction error over {len(errors)} graphs: median {statistics.median(abs(e) for e in errors):.0%}, "
              f"worst {max(errors, key=abs):+.0%}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seq-lens", nargs="+", type=int, help="default: 32 64 128 for CrypTen, 32 64 for SPU")
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSONL of rows (appended; present rows skipped)")
    parser.add_argument("--show", action="store_true", help="print the recorded rows and exit")
    parser.add_argument("--markdown", action="store_true", help="with --show: the table as Markdown")
    parser.add_argument("--plan", action="store_true", help="print each pending row's predicted wall-clock and exit")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = read_rows(args.out)
    if args.show:
        (markdown if args.markdown else show)(rows)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    planned = 0.0
    for model in args.models:
        graphs = None
        for engine in args.engines:
            for seq_len in args.seq_lens or SEQ_LENS[ENGINES[engine][0]]:
                for network in args.networks:
                    key = row_key(engine, model, seq_len, network)
                    if key in rows:
                        continue
                    graphs = graphs or graphs_of(model)
                    if args.plan:
                        seconds = planned_seconds(engine, seq_len, network, graphs)
                        planned += seconds
                        print(f"{key}: about {seconds / 60:.1f} min of passes", flush=True)
                        continue
                    row = run_row(engine, model, seq_len, network, graphs)
                    with args.out.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    rows[key] = row
                    print(f"{key}: measured {row['graphs']['baseline']['seconds']:.2f} / {row['graphs']['all']['seconds']:.2f}"
                          f" / {row['graphs']['best']['seconds']:.2f} s, predicted {row['graphs']['baseline']['predicted_s']:.2f}"
                          f" / {row['graphs']['all']['predicted_s']:.2f} / {row['graphs']['best']['predicted_s']:.2f} s",
                          flush=True)
    if args.plan:
        print(f"pending rows: about {planned / 3600:.2f} h of passes (setup, weight sharing and compilation extra)")
        return 0
    show({k: v for k, v in rows.items() if v["engine"] in args.engines})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
