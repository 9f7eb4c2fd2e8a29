"""The cost flags of ``aero-compile``: analyse the graph before and after the passes.

    aero-compile gpt2 --passes all --protocol bumblebee --network wan --seq-len 128 --per-layer \
        --report-json r.json --report-md r.md --plot r.png
"""

from __future__ import annotations

import argparse
import warnings

from ..errors import AeroError
from ..network import link_from_args
from ..secrecy import WEIGHT_MASK_MODES

DEFAULT_PROFILE = "crypten"
# Files this extension writes: the CLI checks them before any work and stages them (cli.OutputPlan).
OUTPUT_OPTIONS = {"report_md": "--report-md", "plot": "--plot"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("MPC cost (rounds, bytes, latency of a private forward pass)")
    group.add_argument("--protocol", default=None,
                       help="protocol profile: crypten (measured), bumblebee (fitted to the AERO paper), or a "
                            "profile JSON (default: crypten)")
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


def requested_profile(args: argparse.Namespace) -> str | None:
    """The profile ``--protocol`` names, or None when the user left the default (private runs check it)."""
    return args.protocol


def check(args: argparse.Namespace) -> None:
    """Every cost option that needs no graph, checked before anything runs (one-line AeroError)."""
    if args.batch < 1:
        raise AeroError(f"--batch must be a positive integer, got {args.batch}")
    if args.plot and not str(args.plot).lower().endswith((".png", ".pdf", ".svg")):
        raise AeroError(f"--plot writes an image: give a .png, .pdf or .svg path, not '{args.plot}'")
    if args.protocol:
        from .profiles import load_profile

        load_profile(args.protocol)  # an unknown protocol fails now, not after capture and the passes


def _analysis_options(args: argparse.Namespace) -> dict:
    return dict(profile=args.protocol or DEFAULT_PROFILE, network=link_from_args(args), seq_len=args.seq_len,
                batch=args.batch, weight_masks=args.weight_masks)


def apply(args: argparse.Namespace, result) -> None:
    """Analyse before and after, print the table, add ``cost`` and ``savings`` to the report, write files."""
    report = result.report
    unclassified = sorted(set(report.before.unknown_ops or []) | set(report.after.unknown_ops or []))
    if unclassified and not args.no_cost:
        print(f"cost: no claim made: {len(unclassified)} op(s) aero-compile cannot classify, so it cannot price "
              f"them: {', '.join(unclassified[:8])}{' ...' if len(unclassified) > 8 else ''}")
        args.no_cost = True
    if args.no_cost:
        return
    from ..fileio import write_text_atomic
    from .analyzer import analyze
    from .report import markdown, plot, print_cost_table, savings

    options = _analysis_options(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unsupported ops are printed under the table instead
        before = analyze(result.before, **options)
        after = analyze(result.graph_module, **options)
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


def finish(args: argparse.Namespace, result) -> None:
    """Last, after every extension: price each nonlinearity left after the passes (the report lists them)."""
    remaining = result.report.after.remaining_nonlinear
    if not remaining or args.no_cost or result.report.after.cost is None:
        return
    from ..records import OpCost
    from .analyzer import analyze

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        costed = analyze(result.graph_module, **_analysis_options(args))
    by_name = {record.name: record for record in costed.ops}
    for entry in remaining:
        records = [by_name[name] for name in entry.ops if name in by_name]
        entry.cost = OpCost(rounds=sum(r.rounds for r in records), bytes=sum(r.bytes for r in records),
                            count=len(records)) if records else None
    print("  cost of what remains: " + ", ".join(
        f"{entry.label}: {entry.cost.rounds} rounds, {entry.cost.bytes / 1e6:.3g} MB" if entry.cost is not None
        else f"{entry.label}: not priced by the {costed.profile} profile" for entry in remaining))
