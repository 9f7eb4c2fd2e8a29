"""The before/after cost report: JSON objects, the terminal table, Markdown, and a plot."""

from __future__ import annotations

from dataclasses import dataclass

from ..records import format_ratio, optional, ratio
from .analyzer import CostReport
from .machine import compute_mismatch

PER_QUERY_BASIS = "per query (online); the once-per-model setup (cost.offline) is left out"


@dataclass
class Savings:
    """The report's ``savings``: before / after per quantity, 4 decimals (None where after is zero)."""

    bytes: float | None
    latency: float | None
    rounds: float | None
    basis: str | None = optional()  # what the ratios compare, where an offline setup is reported apart


def savings(before: CostReport, after: CostReport) -> Savings:
    """How many times the passes cut bytes, latency and rounds (per query: the offline setup is apart)."""
    has_offline = before.weight_masks == "per-model" or after.weight_masks == "per-model"
    return Savings(bytes=_round(ratio(before.bytes, after.bytes)), latency=_round(ratio(before.latency_s, after.latency_s)),
                   rounds=_round(ratio(before.rounds, after.rounds)), basis=PER_QUERY_BASIS if has_offline else None)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def format_bytes(n: float) -> str:
    """Three significant digits: 17.5 GB, 692 MB, 0."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B" if n else "0"


def format_seconds(s: float) -> str:
    if s >= 120:
        return f"{s / 60:.3g} min"
    if s >= 1:
        return f"{s:.3g} s"
    return f"{s * 1000:.3g} ms" if s else "0"


def _change(label: str, before: float, after: float, direction: str) -> str:
    text = format_ratio(before, after)
    if text.endswith("x"):
        return f"{label} {text} {direction}"
    return f"{label} {'unchanged' if text == '=' else text}"


def summary_line(before: CostReport, after: CostReport) -> str:
    """E.g. "communication 4.03x lower, latency 1.90x lower, rounds 1.31x fewer"."""
    return ", ".join((_change("communication", before.bytes, after.bytes, "lower"),
                      _change("latency", before.latency_s, after.latency_s, "lower"),
                      _change("rounds", before.rounds, after.rounds, "fewer")))


def offline_line(before: CostReport, after: CostReport) -> str:
    """The once-per-model setup beside the per-query table ("" when weights are masked per query)."""
    if after.weight_masks != "per-model":
        return ""
    b, a = before.offline, after.offline
    return (f"offline, once per model (weights masked once: W - B opened at setup for {_arrow(str(b.count), str(a.count))} "
            f"weights): {_arrow(str(b.rounds), str(a.rounds))} rounds, {_arrow(format_bytes(b.bytes), format_bytes(a.bytes))}, "
            f"{_arrow(format_seconds(b.latency_s or 0), format_seconds(a.latency_s or 0))}; the table above is per query")


def _rows(before: CostReport, after: CostReport, per_layer: bool) -> list[tuple]:
    """(label, rounds b/a, bytes b/a, latency b/a, latency share b/a) per op kind (or layer), then the total."""
    table_b, table_a = (before.by_layer, after.by_layer) if per_layer else (before.by_op, after.by_op)
    keys = list(table_b) + [k for k in table_a if k not in table_b]
    rows = []
    for key in keys:
        b, a = table_b.get(key), table_a.get(key)
        rows.append((key, b.rounds if b else 0, a.rounds if a else 0, b.bytes if b else 0.0, a.bytes if a else 0.0,
                     b.latency_s if b else 0.0, a.latency_s if a else 0.0,
                     (b.latency_s / before.latency_s if b and before.latency_s else 0.0),
                     (a.latency_s / after.latency_s if a and after.latency_s else 0.0)))
    rows.append(("total", before.rounds, after.rounds, before.bytes, after.bytes, before.latency_s, after.latency_s, 1.0, 1.0))
    return rows


def _title(before: CostReport) -> str:
    net = before.network
    return (f"MPC cost, {before.profile} profile ({before.schedule}), {net.name} {net.bandwidth_mbps:g} Mbit/s "
            f"{net.rtt_ms:g} ms, batch {before.batch} x {before.seq_len} tokens")


# how to time a profile's compute on this machine (shown when the profile was timed on another kind)
RECALIBRATE = {"crypten": "`aero-compile calibrate crypten --compute -o crypten-here.json` (on a copy of the "
                          "shipped profile) times them here",
               "spu-cheetah": "`aero-compile calibrate spu --update spu-here.json --compute` (on a copy of the "
                              "shipped profile) times them here"}

_HEADER = ("op", "rounds", "bytes", "latency", "share of latency", "latency ratio")


def _arrow(before: str, after: str) -> str:
    return before if before == after else f"{before} -> {after}"


def print_cost_table(before: CostReport, after: CostReport, console=None, per_layer: bool = False) -> None:
    """Rounds, bytes and latency per op kind (or per layer), before -> after, with shares and ratios."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        probe = Console()
        console = probe if probe.is_terminal else Console(width=110)  # logs and pipes: no wrapped cells
    table = Table(title=_title(before))
    for column in _HEADER:
        table.add_column("layer" if per_layer and column == "op" else column, justify="left" if column == "op" else "right")
    for label, rb, ra, bb, ba, lb, la, sb, sa in _rows(before, after, per_layer):
        table.add_row(label, _arrow(str(rb), str(ra)), _arrow(format_bytes(bb), format_bytes(ba)),
                      _arrow(format_seconds(lb), format_seconds(la)), _arrow(f"{sb:.0%}", f"{sa:.0%}"),
                      format_ratio(lb, la), end_section=label == "total")
    console.print(table)
    console.print(f"  {summary_line(before, after)}{' (per query)' if after.weight_masks == 'per-model' else ''}")
    offline = offline_line(before, after)
    if offline:
        console.print(f"  {offline}")
    for report, when in ((before, "before"), (after, "after")):
        for kind, names in report.unsupported.items():
            console.print(f"  [yellow]warning[/yellow]: {when}: {len(names)} {kind} op(s) not costed by the "
                          f"{report.profile} profile (counted as zero): {', '.join(names[:6])}")
        if report.approximate:
            console.print(f"  note: {when}: {len(report.approximate)} op(s) at a size the profile did not measure "
                          f"(interpolated or extrapolated from its measured sizes): {', '.join(report.approximate[:6])}")
    if before.schedule == "critical_path":
        console.print("  rounds: on the critical path (independent ops share rounds); bytes: all ops")
    if before.bytes_counted:
        console.print(f"  bytes: {before.bytes_counted}")
    mismatch = compute_mismatch(before.compute_timed_on)
    if mismatch:
        console.print(f"  [yellow]note[/yellow]: {mismatch}; {RECALIBRATE.get(before.profile, '')}")


def markdown(before: CostReport, after: CostReport, per_layer: bool = False) -> str:
    """The same table as Markdown."""
    header = ("op", "rounds before", "rounds after", "bytes before", "bytes after", "latency before",
              "latency after", "share before", "share after", "latency ratio")
    lines = [f"### {_title(before)}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, rb, ra, bb, ba, lb, la, sb, sa in _rows(before, after, False):
        lines.append(f"| {label} | {rb} | {ra} | {format_bytes(bb)} | {format_bytes(ba)} | {format_seconds(lb)} | "
                     f"{format_seconds(la)} | {sb:.0%} | {sa:.0%} | {format_ratio(lb, la)} |")
    if per_layer:
        lines += ["", "| layer | rounds before | rounds after | bytes before | bytes after | latency before | latency after |",
                  "|---|---|---|---|---|---|---|"]
        for label, rb, ra, bb, ba, lb, la, _, _ in _rows(before, after, True):
            lines.append(f"| {label} | {rb} | {ra} | {format_bytes(bb)} | {format_bytes(ba)} | "
                         f"{format_seconds(lb)} | {format_seconds(la)} |")
    lines += ["", summary_line(before, after) + "."]
    if offline_line(before, after):
        lines += ["", offline_line(before, after) + "."]
    lines.append("")
    return "\n".join(lines)


def plot(before: CostReport, after: CostReport, path) -> None:
    """Stacked bars per op class, before and after: rounds (left) and bytes (right), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_path

    kinds = list(before.by_op) + [k for k in after.by_op if k not in before.by_op]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for axis, field, label in ((axes[0], "rounds", "rounds"), (axes[1], "bytes", "GB")):
        bottoms = [0.0, 0.0]
        for index, kind in enumerate(kinds):
            values = [getattr(r.by_op[kind], field) if kind in r.by_op else 0 for r in (before, after)]
            values = [v / 1e9 for v in values] if field == "bytes" else values
            axis.bar(["before", "after"], values, bottom=bottoms, label=kind, color=f"C{index % 10}")
            bottoms = [b + v for b, v in zip(bottoms, values)]
        axis.set_ylabel(label)
        axis.set_title(f"{label} per op class")
    axes[1].legend(loc="upper right", fontsize="small")
    figure.suptitle(_title(before), fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)
