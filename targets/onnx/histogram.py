"""Count the op types of an ONNX model: the before/after table of the report (what onnxsim prints).

Counts walk the main graph, every subgraph (If/Loop bodies) and every model-local function, so an op
hidden inside a function still shows. Ops outside the default domain are keyed ``domain::OpType``.
"""

from __future__ import annotations

from collections import Counter


def op_histogram(model) -> dict[str, int]:
    """``{op_type: count}`` of an ``onnx.ModelProto``, sorted by op type."""
    counts: Counter = Counter()
    graphs = [model.graph]
    bodies = [function.node for function in model.functions]
    while graphs or bodies:
        nodes = graphs.pop().node if graphs else bodies.pop()
        for node in nodes:
            counts[f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
    return dict(sorted(counts.items()))


def histogram_changes(before: dict[str, int], after: dict[str, int]) -> list[tuple[str, int, int]]:
    """``(op, before, after)`` for every op type whose count differs, in op-type order."""
    return [(op, before.get(op, 0), after.get(op, 0)) for op in sorted(set(before) | set(after))
            if before.get(op, 0) != after.get(op, 0)]
