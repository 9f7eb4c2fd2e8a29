"""Predicted vs published cost of every row of the AERO paper's GPT-2 tables, and the analyzer's speed.

    python benchmarks/cost_reference.py

Rows are rebuilt with the real pass pipelines on GPT-2 small (vocabulary 50000, as the paper's
CodeParrot tokenizer) and analysed with the shipped bumblebee profile on the WAN preset.
"""

from __future__ import annotations

import statistics
import time

from aero_compile.capturing import capture
from aero_compile.cost import analyze
from aero_compile.tools.fit_bumblebee import REFERENCE_MODEL, reference_rows, row_graphs


def compare_rows(graphs) -> None:
    print(f"{'T':>4}  {'config':36s} {'comm GB':>8} {'paper':>7} {'err':>6}   {'latency min':>11} {'paper':>6} {'err':>6}")
    for row in reference_rows():
        report = analyze(graphs[row["pipeline"]], "bumblebee", "wan", seq_len=row["seq_len"])
        comm, latency = report.bytes / 1e9, report.latency_s / 60
        paper_comm, paper_latency = row["bytes"] / 1e9, row["seconds"] / 60
        print(f"{row['seq_len']:>4}  {row['config']:36s} {comm:8.2f} {paper_comm:7.2f} {comm / paper_comm - 1:+6.1%}   "
              f"{latency:11.2f} {paper_latency:6.2f} {latency / paper_latency - 1:+6.1%}")


def time_analyzer(gm, label: str, repeats: int = 5) -> None:
    """Median wall and CPU time of one analysis (CPU time: the machine may be shared)."""
    for profile in ("crypten", "bumblebee"):
        for seq_len in (128, 512):
            wall, cpu = [], []
            for _ in range(repeats):
                started, started_cpu = time.perf_counter(), time.process_time()
                analyze(gm, profile, "wan", seq_len=seq_len)
                wall.append(time.perf_counter() - started)
                cpu.append(time.process_time() - started_cpu)
            print(f"analyze({label}, {profile}, T={seq_len}): median {statistics.median(wall) * 1000:.0f} ms wall, "
                  f"{statistics.median(cpu) * 1000:.0f} ms CPU over {repeats} runs ({len(gm.graph.nodes)} graph nodes)")


def main() -> None:
    started = time.perf_counter()
    baseline = capture(REFERENCE_MODEL)
    print(f"capture {REFERENCE_MODEL}: {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    graphs = row_graphs(baseline)
    print(f"pass pipelines for the five architectures: {time.perf_counter() - started:.1f} s\n")
    compare_rows(graphs)
    print()
    time_analyzer(baseline, "GPT-2 small")
    time_analyzer(capture("gpt2{n_layer=48}"), "GPT-2, 48 layers", repeats=3)


if __name__ == "__main__":
    main()
