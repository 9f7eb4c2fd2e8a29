"""canonicalize: the graph in the plain form the other passes and backends expect.

* drops metadata asserts, export's input guards, dropout in eval mode and casts to the dtype a tensor
  already has;
* expands ``scaled_dot_product_attention`` into ``matmul -> scale -> mask -> softmax -> matmul`` so the
  softmax is a node of its own. Masked scores get a large finite negative (``MASK_VALUE``), not -inf,
  which MPC cannot represent.

Before: ``y = sdpa(q, k, v, is_causal=True)``
After:  ``s = matmul(q, k^T) * scale; s = masked_fill(s, ~tril(ones(L, S)), MASK_VALUE); y = matmul(softmax(s), v)``
Preserves the computation.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from aero_compile.ops import MASK_VALUE, OpKind, classify_graph, target_name
from aero_compile.pass_registry import PassResult, Phase, register_pass
from aero_compile.shapes import propagate_shapes

from ._rewrite import copy_meta

_METADATA = {"_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range",
             "sym_constrain_range_for_size"}
_CASTS = {"to", "_to_copy", "type_as"}
aten = torch.ops.aten


def _is_guard_call(node: fx.Node) -> bool:
    return node.op == "call_module" and str(node.target).startswith("_guards")


def _drop_noops(gm: fx.GraphModule) -> int:
    metas = propagate_shapes(gm, seq_len=3, batch=2)
    changed = 0
    for node in list(gm.graph.nodes):
        name = target_name(node) if node.op in ("call_function", "call_method") else ""
        if name in _METADATA or _is_guard_call(node):
            if not node.users:
                gm.graph.erase_node(node)
                changed += 1
            continue
        if not node.args or not isinstance(node.args[0], fx.Node):
            continue
        source = node.args[0]
        is_eval_dropout = name in ("dropout", "feature_dropout") and (len(node.args) < 3 or node.args[2] is False) \
            and not node.kwargs.get("train", False)
        same = metas.get(node) is not None and metas.get(node) == metas.get(source)
        if is_eval_dropout or (name in _CASTS and same):
            node.replace_all_uses_with(source)
            gm.graph.erase_node(node)
            changed += 1
    return changed


def _expand_sdpa(gm: fx.GraphModule, node: fx.Node, head_dim: int) -> None:
    graph = gm.graph
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    defaults = (None, None, None, None, 0.0, False, None, False)
    params = dict(zip(names, defaults))
    params.update(zip(names, node.args))
    params.update(node.kwargs)
    if params["enable_gqa"]:
        raise NotImplementedError("scaled_dot_product_attention with enable_gqa=True")
    if params["dropout_p"]:
        raise NotImplementedError("scaled_dot_product_attention with dropout_p > 0 (capture in eval mode)")
    scale = params["scale"] if params["scale"] is not None else 1.0 / math.sqrt(head_dim)
    q, k, v, mask = params["query"], params["key"], params["value"], params["attn_mask"]
    with graph.inserting_before(node):
        new = []
        key_t = graph.call_function(aten.transpose.int, (k, -2, -1))
        scores = graph.call_function(aten.matmul.default, (q, key_t))
        scores = graph.call_function(aten.mul.Tensor, (scores, scale))
        new += [key_t, scores]
        if params["is_causal"]:
            rows = graph.call_function(aten.sym_size.int, (q, -2))
            cols = graph.call_function(aten.sym_size.int, (k, -2))
            ones = graph.call_function(aten.ones.default, ([rows, cols],), {"dtype": torch.bool})
            keep = graph.call_function(aten.tril.default, (ones,))
            drop = graph.call_function(aten.logical_not.default, (keep,))
            scores = graph.call_function(aten.masked_fill.Scalar, (scores, drop, MASK_VALUE))
            new += [rows, cols, ones, keep, drop, scores]
        if isinstance(mask, fx.Node):
            if mask.meta.get("val") is not None and mask.meta["val"].dtype == torch.bool:
                drop = graph.call_function(aten.logical_not.default, (mask,))
                scores = graph.call_function(aten.masked_fill.Scalar, (scores, drop, MASK_VALUE))
                new += [drop, scores]
            else:
                # A float mask is added; clamp its -inf to the finite mask value.
                finite = graph.call_function(aten.clamp_min.default, (mask, MASK_VALUE))
                scores = graph.call_function(aten.add.Tensor, (scores, finite))
                new += [finite, scores]
        probs = graph.call_function(aten.softmax.int, (scores, -1))
        out = graph.call_function(aten.matmul.default, (probs, v))
        new += [probs, out]
    copy_meta(node, *new)
    node.replace_all_uses_with(out)
    graph.erase_node(node)


@register_pass("canonicalize", preserves_computation=True, phase=Phase.CANONICALIZE,
               summary="drop no-op casts and asserts; expand scaled_dot_product_attention into explicit softmax")
def canonicalize(gm) -> PassResult:
    changed = _drop_noops(gm)
    attention = [op for op in classify_graph(gm) if op.kind is OpKind.ATTENTION]
    if attention:
        metas = propagate_shapes(gm, seq_len=3, batch=2)
        for op in attention:
            _expand_sdpa(gm, op.output, head_dim=metas[op.nodes[0].args[0]].shape[-1])
            changed += 1
    return PassResult(gm, changed)
