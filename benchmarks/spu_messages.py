"""SPU cheetah: the model owner's messages per forward pass of a two-process run against the analyzer's count.

    python benchmarks/spu_messages.py --model gpt2-tiny --seq-len 8 --repetitions 3
    python benchmarks/spu_messages.py --model "gpt2{n_layer=2,n_embd=64,n_head=2,vocab_size=256}" --seq-len 32

Runs the baseline and ``--passes all`` between two party processes over brpc loopback (as ``--run-private
--engine spu`` runs), ``--repetitions`` forward passes back to back after the warm-up, and prints one table
row per graph: every pass's messages, the fewest (a pass without a silent-OT refill, where there is one),
and the analyzer's count (refill-free + the refills' expected share).
"""

from __future__ import annotations

import argparse
import statistics


def rows(model: str, seq_len: int, repetitions: int) -> list[str]:
    import aero_compile as ac
    from aero_compile.cost import analyze
    from aero_compile.pass_manager import PassManager
    from aero_compile.targets.spu.runner import run_private

    graphs = {"before": ac.capture(model), "after": PassManager.from_pipeline("all").run(ac.capture(model)).graph_module}
    measured = run_private(graphs, seq_len=seq_len, protocol="cheetah", mode="processes", timeout_s=900,
                           repetitions=repetitions)
    lines = []
    for name, gm in graphs.items():
        ops = analyze(gm, "spu-cheetah", "loopback", seq_len=seq_len).ops
        counted, refills = sum(o.messages for o in ops), sum(o.refill_messages for o in ops)
        runs = measured[name]["timing"]["all_rounds"]
        mean, fewest = statistics.mean(runs), min(runs)
        lines.append(f"| {model} | {seq_len} | {name} | {', '.join(map(str, runs))} (mean {mean:.0f}) | {fewest} | "
                     f"{counted - refills:.0f} ({(counted - refills) / fewest - 1:+.0%}) + {refills:.0f} = {counted:.0f} "
                     f"({counted / mean - 1:+.0%}) |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-tiny")
    parser.add_argument("--seq-len", type=int, default=8)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    print("| model | T | graph | passes sent | fewest | counted (refill-free + refills) |")
    print("|---|---|---|---|---|---|")
    for line in rows(args.model, args.seq_len, args.repetitions):
        print(line)


if __name__ == "__main__":
    main()
