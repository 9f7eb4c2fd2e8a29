"""The pipeline report: what a graph contains per OpKind, before and after, and the table the CLI prints.

``PassManager.run`` returns a ``PipelineReport``; the CLI and its extensions fill its optional
sections (``output``, each side's ``cost``, ``savings``, ``measured``); ``to_json()`` is what
``--report-json`` writes (``records.to_json``: fields in order, unset optional sections left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch.fx as fx

from .ops import NONLINEAR, OpKind, classify_graph, target_name
from .records import OpCost, format_ratio, optional, to_json
from .shapes import numel, propagate_shapes

if TYPE_CHECKING:
    from .cost.analyzer import CostSummary
    from .cost.report import Savings

# Kinds shown in the terminal table, in this order (the JSON has every kind).
TABLE_KINDS = [
    OpKind.SOFTMAX, OpKind.LAYERNORM, OpKind.RMSNORM, OpKind.GELU, OpKind.RELU, OpKind.SILU,
    OpKind.EXP, OpKind.TANH, OpKind.SIGMOID, OpKind.RSQRT, OpKind.DIV, OpKind.POW, OpKind.MAX,
    OpKind.COMPARE, OpKind.TRIG, OpKind.ATTENTION, OpKind.LINEAR, OpKind.MATMUL, OpKind.MUL,
    OpKind.EMBEDDING, OpKind.UNKNOWN,
]


@dataclass
class PassRecord:
    """What one pass did: its rewrites, the check after it, its time."""

    name: str
    options: dict
    changed: int
    preserves_computation: bool
    max_abs_diff: float | None = optional()  # logits against the graph before the pass (when verified)
    rel_diff: float | None = optional()  # the same over the largest |logit|
    seconds: float = 0.0
    notes: list[str] | None = optional()


@dataclass
class Nonlinearity:
    """Nonlinear ops of one kind on secret data, in one module class: what a private run still pays for."""

    kind: str  # the OpKind value
    module: str  # the innermost module class they sit in ("Gemma2Attention", "MixtralTopKRouter"; "" if none)
    count: int
    elements: int  # scalars they transform at the report's [batch, seq_len]
    operators: list[str]  # the operators by name (aten names; a Python-written region by its class)
    ops: list[str]  # node names
    cost: OpCost | None = optional()  # rounds and bytes under the cost profile (filled by the CLI when costed)

    @property
    def label(self) -> str:
        named = f" ({', '.join(self.operators)})" if self.operators != [self.kind] else ""
        return f"{self.kind}{named} x{self.count}" + (f" in {self.module}" if self.module else "")


@dataclass
class GraphSummary:
    """One side of the report: node counts and nonlinear elements per OpKind value, and its MPC cost."""

    op_counts: dict[str, int]
    op_elements: dict[str, int]
    unknown_ops: list[str] | None = optional()
    cost: CostSummary | None = optional()  # filled by the cost extension
    # After the passes: every nonlinearity left on secret data, by kind and module class (see remaining_nonlinearities)
    remaining_nonlinear: list[Nonlinearity] | None = optional()


@dataclass
class PipelineReport:
    """What a pipeline run reports; ``to_json()`` is the ``--report-json`` object."""

    model: str
    seq_len: int
    pipeline: str
    passes: list[PassRecord]
    before: GraphSummary
    after: GraphSummary
    reordered: list[str] | None = optional()  # the order run, where it differs from the order given
    output: dict | None = optional()  # what the emitter (-o) wrote and verified, as the backend says it
    savings: Savings | None = optional()  # before / after ratios, from the cost extension
    measured: dict[str, dict] | None = optional()  # private runs per side, from --run-private
    protocol_tuning: dict | None = optional()  # CrypTen settings tried by --tune-protocol, and the pick

    def to_json(self) -> dict:
        return to_json(self)


def summarize_graph(gm: fx.GraphModule, seq_len: int, batch: int = 1) -> GraphSummary:
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
    return GraphSummary(op_counts=counts, op_elements=elements, unknown_ops=unknown or None)


def remaining_nonlinearities(gm: fx.GraphModule, seq_len: int, batch: int = 1) -> list[Nonlinearity]:
    """Every nonlinear op that runs on secret data, grouped by (kind, module class), in graph order.

    Public work (rotary tables, causal masks built from shapes) and divisions by the owner's weights are
    left out: they cost nothing under MPC (``secrecy.py``, the same rule the cost analyzer applies).
    """
    from .cost.features import cost_kind, operands
    from .secrecy import propagate_secrecy

    metas = propagate_shapes(gm, seq_len=seq_len, batch=batch)
    levels = propagate_secrecy(gm)
    groups: dict[tuple[str, str], Nonlinearity] = {}
    for op in classify_graph(gm):
        if op.kind not in NONLINEAR and op.kind is not OpKind.UNKNOWN:
            continue
        kind = cost_kind(op, operands(op, metas), levels)
        if kind is None or (kind not in NONLINEAR and kind is not OpKind.UNKNOWN):
            continue
        meta = metas.get(op.output)
        entry = groups.setdefault((kind.value, op.module_class),
                                  Nonlinearity(kind.value, op.module_class, 0, 0, [], []))
        operator = op.module_class if op.is_region else target_name(op.output).strip("_")  # div_ is div
        if operator not in entry.operators:
            entry.operators.append(operator)
        entry.count += 1
        entry.elements += numel(meta.shape) if meta else 0
        entry.ops.append(op.name)
    return list(groups.values())


def print_summary_table(report: PipelineReport, console=None) -> None:
    """Before/after counts and elements per kind, with ratios."""
    from rich.console import Console
    from rich.table import Table

    # Piped output defaults to 80 columns, which truncates element counts; the table needs ~100.
    console = console or Console(width=max(Console().width, 100))
    before, after = report.before, report.after
    table = Table(title=f"{report.model}: {report.pipeline or 'no passes'} (T={report.seq_len})")
    for column in ("op", "count before", "count after", "", "elements before", "elements after", "ratio"):
        table.add_column(column, justify="left" if column == "op" else "right")
    kinds = [k.value for k in TABLE_KINDS]
    hidden = {"reshape", "noop", "constant", "elementwise", "reduce"}  # free under MPC: JSON only
    kinds += sorted((set(before.op_counts) | set(after.op_counts)) - set(kinds) - hidden)
    for kind in kinds:
        cb, ca = before.op_counts.get(kind, 0), after.op_counts.get(kind, 0)
        if not cb and not ca:
            continue
        eb, ea = before.op_elements.get(kind), after.op_elements.get(kind)
        table.add_row(kind, str(cb), str(ca), format_ratio(cb, ca),
                      f"{eb:,}" if eb is not None else "", f"{ea:,}" if ea is not None else "",
                      format_ratio(eb or 0, ea or 0) if eb is not None else "")
    console.print(table)
    remaining = report.after.remaining_nonlinear
    if remaining is not None:
        console.print("  nonlinear on secret data after the passes: "
                      + (", ".join(_remaining_text(entry) for entry in remaining) or "none"))
    for entry in report.passes:
        drift = entry.max_abs_diff
        drift_text = "" if drift is None else (f"verified, max |diff| {drift:.2e}" if entry.preserves_computation
                                              else f"architecture change, logits drift {drift:.3g}")
        console.print(f"  {entry.name}: {entry.changed} rewrite(s); {drift_text}")


def _remaining_text(entry: Nonlinearity) -> str:
    text = entry.label
    if entry.cost is not None:
        text += f" ({entry.cost.rounds} rounds, {entry.cost.bytes / 1e6:.3g} MB)"
    return text
