"""fold-linear: two linear maps with nothing nonlinear between them become one.

Before: ``h = linear(x, W1, b1); y = linear(h, W2, b2)``   After: ``y = linear(x, W2 @ W1, W2 @ b1 + b2)``.
Seen through views that only reshape leading dims and no-ops (dropout in eval, casts), and through
GPT-2's Conv1D (``addmm(b, x, W)``). In a Softmax-only FFN this turns d -> 4d -> d into one d x d layer.
Preserves the computation (the pass manager verifies it numerically). The fused weight is computed in
float64 and stored in the original dtype.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from aero_compile.capturing import remove_dead_code
from aero_compile.blocks import linear_parts
from aero_compile.ops import OpKind, classify_graph, classify_node
from aero_compile.pass_registry import PassResult, Phase, register_pass
from aero_compile.shapes import propagate_shapes

from ._rewrite import add_parameter, copy_meta

_THROUGH = {OpKind.RESHAPE, OpKind.NOOP}
_PROBE_BATCH, _PROBE_SEQ = 2, 3  # distinct sizes, so a view that permutes leading dims is caught


def _producer_linear(gm, metas, node: fx.Node) -> fx.Node | None:
    """Walk back from a linear's input through single-use leading-dim views to the linear feeding it."""
    while True:
        if len(node.users) != 1:
            return None
        kind = classify_node(gm, node)
        if kind is OpKind.LINEAR:
            return node
        if kind not in _THROUGH or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        source = node.args[0]
        before, after = metas.get(source), metas.get(node)
        if before is None or after is None or before.shape[-1:] != after.shape[-1:]:
            return None  # the view mixes the feature dim: not a leading-dim reshape
        node = source


def _fold_once(gm: fx.GraphModule) -> int:
    metas = propagate_shapes(gm, seq_len=_PROBE_SEQ, batch=_PROBE_BATCH)
    graph = gm.graph
    folded = 0
    consumed: set[fx.Node] = set()
    for op in classify_graph(gm):
        second = op.output
        if op.kind is not OpKind.LINEAR or second in consumed:
            continue
        outer = linear_parts(gm, second)
        if outer is None or not isinstance(outer.input, fx.Node):
            continue
        first = _producer_linear(gm, metas, outer.input)
        if first is None or first in consumed:
            continue
        inner = linear_parts(gm, first)
        if inner is None or not isinstance(inner.input, fx.Node):
            continue
        source_shape, target_shape = metas[inner.input].shape, metas[second].shape
        if source_shape[:-1] != target_shape[:-1] and len(target_shape) != 2:
            continue
        dtype = outer.weight.dtype
        w2, w1 = outer.weight.double(), inner.weight.double()
        weight = (w2 @ w1).to(dtype)
        bias = None
        if inner.bias is not None:
            bias = w2 @ inner.bias.double()
        if outer.bias is not None:
            bias = outer.bias.double() if bias is None else bias + outer.bias.double()
        stem = f"folded_{first.name}_{second.name}"
        weight_name = add_parameter(gm, f"{stem}_weight", weight)
        bias_name = add_parameter(gm, f"{stem}_bias", bias.to(dtype)) if bias is not None else None
        with graph.inserting_before(second):
            args = [inner.input, graph.get_attr(weight_name)]
            if bias_name:
                args.append(graph.get_attr(bias_name))
            fused = graph.call_function(torch.ops.aten.linear.default, tuple(args))
            result = fused
            if source_shape[:-1] != target_shape[:-1]:
                result = graph.call_function(torch.ops.aten.reshape.default, (fused, [-1, target_shape[-1]]))
        copy_meta(second, fused, result)
        second.replace_all_uses_with(result)
        consumed.update((first, second))
        folded += 1
    return folded


@register_pass("fold-linear", preserves_computation=True, phase=Phase.FOLD,
               summary="merge linear layers with nothing nonlinear between them (W2·W1, bias folded)")
def fold_linear(gm) -> PassResult:
    total = 0
    while True:  # a chain of three linears folds in two rounds
        folded = _fold_once(gm)
        if not folded:
            break
        remove_dead_code(gm)
        total += folded
    return PassResult(gm, total)
