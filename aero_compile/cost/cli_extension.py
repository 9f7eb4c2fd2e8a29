"""The cost flags of ``aero-compile``: analyse the graph before and after the passes.

    aero-compile gpt2 --passes all --protocol bumblebee --network wan --seq-len 128 --per-layer \
        --report-json r.json --report-md r.md --plot r.png
"""

from __future__ import annotations

import argparse
import warnings

from ..errors import AeroError
from ..secrecy import WEIGHT_MASK_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("MPC cost (rounds, bytes, latency of a private forward pass)")
    group.add_argument("--protocol", default="crypten",
                       help="protocol profile: crypten (measured), bumblebee (fitted to the AERO paper), or a "
                            "profile JSON (default: crypten)")
    group.add_argument("--network", default=None,
                       help="network preset: lan or wan (100 Mbit/s, 80 ms) (default: lan)")
    group.add_argument("--bandwidth-mbps", type=float, help="link bandwidth in Mbit/s (overrides the preset)")
    group.add_argument("--rtt-ms", type=float, help="round-trip time in ms (overrides the preset)")
    group.add_argument("--batch", type=int, default=1, help="batch size the cost is computed for (default 1)")
    group.add_argument("--per-layer", action="store_true", help="also break the cost down per layer")
    group.add_argument("--report-md", metavar="PATH", help="write the cost report as Markdown")
    group.add_argument("--plot", metavar="PATH.png", help="draw the before/after breakdown (rounds, bytes)")
    group.add_argument("--weight-masks", choices=WEIGHT_MASK_MODES, default=WEIGHT_MASK_MODES[0],
                       help="per-model (default): each weight is masked once per model, so a query opens only the "
                            "activation side of a product with it (the setup is reported apart, as offline); "
                            "per-query: every product opens its weight too, as before. Applies to the analysis and "
                            "to --run-private")
    group.add_argument("--no-cost", action="store_true", help="skip the cost analysis")


def apply(args: argparse.Namespace, result) -> None:
    """Analyse before and after, print the table, add ``cost`` and ``savings`` to the report, write files."""
    if args.no_cost:
        return
    if args.batch < 1:
        raise AeroError(f"--batch must be a positive integer, got {args.batch}")
    if args.plot and not str(args.plot).lower().endswith((".png", ".pdf", ".svg")):
        raise AeroError(f"--plot writes an image: give a .png, .pdf or .svg path, not '{args.plot}'")
    from ..fileio import write_text_atomic
    from .analyzer import analyze
    from .report import markdown, plot, print_cost_table, savings

    options = dict(profile=args.protocol, network=args.network or "lan", seq_len=args.seq_len, batch=args.batch,
                   bandwidth_mbps=args.bandwidth_mbps, rtt_ms=args.rtt_ms, weight_masks=args.weight_masks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unsupported ops are printed under the table instead
        before = analyze(result.before, **options)
        after = analyze(result.graph_module, **options)
    report = result.report
    report.before.cost = before.summary(per_layer=args.per_layer)
    report.after.cost = after.summary(per_layer=args.per_layer)
    report.savings = savings(before, after)
    print_cost_table(before, after, per_layer=False)
    if args.per_layer:
        print_cost_table(before, after, per_layer=True)
    if args.report_md:
        write_text_atomic(args.report_md, markdown(before, after, per_layer=args.per_layer))
    if args.plot:
        plot(before, after, args.plot)
