"""What a graph contains, per OpKind, and the before/after table the CLI prints."""

from __future__ import annotations

import torch.fx as fx

from .ops import NONLINEAR, OpKind, classify_graph
from .shapes import numel, propagate_shapes

# Kinds shown in the terminal table, in this order (the JSON has every kind).
TABLE_KINDS = [
    OpKind.SOFTMAX, OpKind.LAYERNORM, OpKind.RMSNORM, OpKind.GELU, OpKind.RELU, OpKind.SILU,
    OpKind.EXP, OpKind.TANH, OpKind.SIGMOID, OpKind.RSQRT, OpKind.DIV, OpKind.POW, OpKind.MAX,
    OpKind.COMPARE, OpKind.TRIG, OpKind.ATTENTION, OpKind.LINEAR, OpKind.MATMUL, OpKind.MUL,
    OpKind.EMBEDDING, OpKind.UNKNOWN,
]


def summarize_graph(gm: fx.GraphModule, seq_len: int, batch: int = 1) -> dict:
    """Node counts per kind, and how many scalars each nonlinear kind touches at [batch, seq_len]."""
    ops = classify_graph(gm)
    metas = propagate_shapes(gm, seq_len=seq_len, batch=batch)
    counts: dict[str, int] = {}
    elements: dict[str, int] = {}
    for op in ops:
        key = op.kind.value
        counts[key] = counts.get(key, 0) + 1
        if op.kind in NONLINEAR:
            meta = metas.get(op.output)
            elements[key] = elements.get(key, 0) + (numel(meta.shape) if meta else 0)
    unknown = sorted({op.output.name for op in ops if op.kind is OpKind.UNKNOWN})
    summary = {"op_counts": counts, "op_elements": elements}
    if unknown:
        summary["unknown_ops"] = unknown
    return summary


def ratio(before: float, after: float) -> float | None:
    """How many times ``after`` is below ``before``: 4.0 for 100 -> 25 (None when ``after`` is zero)."""
    return before / after if after else None


def format_ratio(before: float, after: float) -> str:
    """A before/after ratio for a table cell: "=", "4.00x", "removed" (after is 0) or "new" (before is 0)."""
    if before == after:
        return "="
    if not after:
        return "removed"
    return f"{ratio(before, after):.2f}x" if before else "new"


def print_summary_table(report: dict, console=None) -> None:
    """Before/after counts and elements per kind, with ratios."""
    from rich.console import Console
    from rich.table import Table

    # Piped output defaults to 80 columns, which truncates element counts; the table needs ~100.
    console = console or Console(width=max(Console().width, 100))
    before, after = report["before"], report["after"]
    table = Table(title=f"{report['model']}: {report.get('pipeline') or 'no passes'} (T={report['seq_len']})")
    for column in ("op", "count before", "count after", "", "elements before", "elements after", "ratio"):
        table.add_column(column, justify="left" if column == "op" else "right")
    kinds = [k.value for k in TABLE_KINDS]
    hidden = {"reshape", "noop", "constant", "elementwise", "reduce"}  # free under MPC: JSON only
    kinds += sorted((set(before["op_counts"]) | set(after["op_counts"])) - set(kinds) - hidden)
    for kind in kinds:
        cb, ca = before["op_counts"].get(kind, 0), after["op_counts"].get(kind, 0)
        if not cb and not ca:
            continue
        eb, ea = before["op_elements"].get(kind), after["op_elements"].get(kind)
        table.add_row(kind, str(cb), str(ca), format_ratio(cb, ca),
                      f"{eb:,}" if eb is not None else "", f"{ea:,}" if ea is not None else "",
                      format_ratio(eb or 0, ea or 0) if eb is not None else "")
    console.print(table)
    for entry in report.get("passes", []):
        drift = entry.get("max_abs_diff")
        drift_text = "" if drift is None else (f"verified, max |diff| {drift:.2e}" if entry["preserves_computation"]
                                              else f"architecture change, logits drift {drift:.3g}")
        console.print(f"  {entry['name']}: {entry['changed']} rewrite(s); {drift_text}")
