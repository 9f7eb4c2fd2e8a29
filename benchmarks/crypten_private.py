"""Measured MPC cost of a private forward pass, before vs after --passes all, under CrypTen (2 parties).

    python benchmarks/crypten_private.py                       # gpt2-tiny and a 4-layer 128-wide GPT, T=32/64/128
    python benchmarks/crypten_private.py --models gpt2-tiny --seq-lens 32

Every figure is measured: two CrypTen processes over gloo on loopback, the client's communicator counters
(rounds, bytes it sent) and its wall time for the forward pass; provider tfp unless --provider ttp.
"""

from __future__ import annotations

import argparse
import platform
import warnings

DEFAULT_MODELS = ["gpt2-tiny", "gpt2{n_layer=4,n_embd=128,n_head=4,vocab_size=1024}"]
DEFAULT_SEQ_LENS = [32, 64, 128]


def _agreement(analyze, graphs, measured, seq_len) -> str:
    """'rounds =, bytes +0.3%' against the cost analyzer's crypten prediction (worst of before/after)."""
    if analyze is None:
        return "n/a"
    rounds_equal, worst_bytes = True, 0.0
    for name, gm in graphs.items():
        predicted = analyze(gm, profile="crypten", seq_len=seq_len, batch=1)
        rounds_equal &= predicted.rounds == measured[name]["rounds"]
        diff = (predicted.bytes - measured[name]["bytes"]) / measured[name]["bytes"]
        worst_bytes = max(worst_bytes, diff, key=abs)
    return f"rounds {'=' if rounds_equal else '!='}, bytes {worst_bytes:+.1%}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--seq-lens", nargs="+", type=int, default=DEFAULT_SEQ_LENS)
    parser.add_argument("--provider", choices=["tfp", "ttp"], default="tfp")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import os

    import aero_compile as ac
    from aero_compile.pass_manager import PassManager
    from aero_compile.targets.crypten.runner import run_private

    try:
        from aero_compile.cost import analyze
    except ImportError:
        analyze = None

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; provider {args.provider}")
    header = (f"{'model':<52} {'T':>4} | {'rounds b/a':>11} {'x':>5} | {'MB b/a':>15} {'x':>5} | "
              f"{'s b/a':>13} {'x':>5} | {'err b/a':>17} | {'argmax b/a':>11} | analyzer")
    print(header)
    print("-" * len(header))
    for model in args.models:
        before = ac.capture(model)
        after = PassManager.from_pipeline("all", verify=False).run(before).graph_module
        for seq_len in args.seq_lens:
            m = run_private({"before": before, "after": after}, seq_len=seq_len, provider=args.provider,
                            timeout_s=900)
            b, a = m["before"], m["after"]
            print(f"{model:<52} {seq_len:>4} | {b['rounds']:>5}/{a['rounds']:<5} {b['rounds'] / a['rounds']:>5.2f} | "
                  f"{b['bytes'] / 1e6:>7.2f}/{a['bytes'] / 1e6:<7.2f} {b['bytes'] / a['bytes']:>5.2f} | "
                  f"{b['seconds']:>6.2f}/{a['seconds']:<6.2f} {b['seconds'] / a['seconds']:>5.2f} | "
                  f"{b['max_abs_error']:.1e}/{a['max_abs_error']:.1e} | "
                  f"{b['argmax_agreement']:>5.0%}/{a['argmax_agreement']:<5.0%} | "
                  f"{_agreement(analyze, {'before': before, 'after': after}, m, seq_len)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
