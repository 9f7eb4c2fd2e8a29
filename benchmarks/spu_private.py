"""Measured MPC cost of a private forward pass, before vs after --passes all, under SPU (cheetah by default).

    PYTHONPATH=. python benchmarks/spu_private.py                     # from the repo root; gpt2-tiny and a 4-layer 128-wide GPT, T=32/64/128
    python benchmarks/spu_private.py --models gpt2-tiny --seq-lens 32
    python benchmarks/spu_private.py --models "gpt2{n_layer=1}" "gpt2{n_layer=2}" --seq-lens 128   # GPT-2 small width

Every figure is measured by SPU's simulator (two parties as threads over SPU's in-memory link: the same
protocol and counters as separate processes, see tests/test_spu_parties.py): the model owner's send +
recv bytes and messages, the run's seconds, the logits error; beside them the analyzer's spu-cheetah
prediction. One line per (model, T), printed as soon as it is measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import warnings

DEFAULT_MODELS = ["gpt2-tiny", "gpt2{n_layer=4,n_embd=128,n_head=4,vocab_size=1024}"]
DEFAULT_SEQ_LENS = [32, 64, 128]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--seq-lens", nargs="+", type=int, default=DEFAULT_SEQ_LENS)
    parser.add_argument("--protocol", default="cheetah", choices=["cheetah", "semi2k", "aby3"])
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import aero_compile as ac
    from aero_compile.cost import analyze
    from aero_compile.pass_manager import PassManager
    from aero_compile.targets.spu.runner import run_private

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; SPU {args.protocol}, simulator", flush=True)
    header = (f"{'model':<52} {'T':>4} | {'MB b/a':>17} {'x':>5} | {'messages b/a':>13} | {'s b/a':>13} | "
              f"{'err b/a':>17} | {'argmax b/a':>11} | analyzer bytes b/a")
    print(header, flush=True)
    for model in args.models:
        before = ac.capture(model)
        after = PassManager.from_pipeline("all", verify=False).run(before).graph_module
        graphs = {"before": before, "after": after}
        for seq_len in args.seq_lens:
            m = run_private(graphs, seq_len=seq_len, protocol=args.protocol)
            b, a = m["before"], m["after"]
            analyzer = []
            for name, gm in graphs.items():
                predicted = analyze(gm, profile=f"spu-{args.protocol}", seq_len=seq_len, batch=1) \
                    if args.protocol == "cheetah" else None
                analyzer.append("n/a" if predicted is None else f"{(predicted.bytes - m[name]['bytes']) / m[name]['bytes']:+.1%}")
            print(f"{model:<52} {seq_len:>4} | {b['bytes'] / 1e6:>8.2f}/{a['bytes'] / 1e6:<8.2f} "
                  f"{b['bytes'] / a['bytes']:>5.2f} | {b['rounds']:>6}/{a['rounds']:<6} | "
                  f"{b['seconds']:>6.1f}/{a['seconds']:<6.1f} | {b['max_abs_error']:>8.1e}/{a['max_abs_error']:<8.1e} | "
                  f"{b['argmax_agreement_resolvable']:>5.0%}/{a['argmax_agreement_resolvable']:<5.0%} | "
                  f"{' / '.join(analyzer)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
