"""entropy-hooks: every attention softmax also yields its per-head entropy as an extra graph output.

Training reads the entropies to regularize them (AERO's head-wise entropy regularizer); inference and
export strip them again with ``strip_entropy_outputs``. They are graph outputs, not Python hooks, so
they survive ``torch.compile`` and re-export.

Before: ``a = softmax(s, -1); ...; return logits``
After:  ``a = softmax(s, -1); e = mean(sum(-(a * log(a + eps)), -1), [0, 2]); ...; return (logits, (e_0, e_1, ...))``

``e_k`` has shape [heads]: E(l, h) = -(1/T) sum_i sum_j a_ij log(a_ij + eps), averaged over the batch
too. Outputs come after the logits, in execution order of the softmaxes; ``graph_info(gm).entropy_outputs``
lists them (layer, heads). ``gm(x)`` then returns ``(logits, entropies)``.

Option ``temperature`` (AERO's SM(t)): ``head`` divides each head's scores by a learnable t [H],
``position`` by a learnable t [H, T_max] (per head and query position, as the paper); both start at 1,
so the logits are unchanged until training moves them. 1/t depends on a weight alone (computed in the
clear by the model owner), so under MPC it costs one public scaling. Preserves the computation.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from aero_compile.errors import AeroError
from aero_compile.graph_info import EntropyOutput, graph_info, set_graph_info
from aero_compile.blocks import attention_softmaxes
from aero_compile.pass_registry import PassResult, Phase, register_pass
from aero_compile.pass_options import Option

from ._rewrite import add_parameter, copy_meta

ENTROPY_EPS = 1e-9  # a_ij = 0 (masked keys) must contribute 0, not NaN
TEMPERATURES = ("none", "head", "position")
aten = torch.ops.aten


def _heads_of(gm: fx.GraphModule, softmax: fx.Node) -> int:
    val = softmax.meta.get("val")
    if isinstance(val, torch.Tensor) and val.dim() == 4 and isinstance(val.shape[1], int):
        return int(val.shape[1])
    from aero_compile.shapes import propagate_shapes  # graphs without export metadata: run once

    meta = propagate_shapes(gm, seq_len=3, batch=1).get(softmax)
    if meta is None or len(meta.shape) != 4:
        raise AeroError(f"softmax '{softmax.name}' is not a [batch, heads, queries, keys] tensor")
    return int(meta.shape[1])


def _insert_temperature(gm: fx.GraphModule, softmax: fx.Node, layer_tag: str, heads: int, mode: str) -> None:
    """scores -> scores * (1/t), t a new parameter broadcast over [B, H, T, T]."""
    graph = gm.graph
    scores = softmax.args[0]
    if mode == "head":
        name = add_parameter(gm, f"attn_temperature_{layer_tag}", torch.ones(heads, 1, 1))
    else:
        max_len = graph_info(gm).max_seq_len or 0
        if max_len <= 0:
            raise AeroError("temperature=position needs the model's context length, which is unknown; use temperature=head")
        name = add_parameter(gm, f"attn_temperature_{layer_tag}", torch.ones(heads, max_len, 1))
    with graph.inserting_before(softmax):
        t = graph.get_attr(name)
        if mode == "position":  # the first T query positions: T is the scores' query dim
            queries = graph.call_function(aten.sym_size.int, (scores, 2))
            t = graph.call_function(aten.slice.Tensor, (t, 1, 0, queries))
            copy_meta(softmax, queries, t)
        inverse = graph.call_function(aten.reciprocal.default, (t,))
        scaled = graph.call_function(aten.mul.Tensor, (scores, inverse))
    copy_meta(softmax, inverse, scaled)
    softmax.args = (scaled,) + tuple(softmax.args[1:])


def _insert_entropy(graph: fx.Graph, softmax: fx.Node) -> fx.Node:
    """-(a * log(a + eps)) summed over keys, averaged over batch and queries: [heads]."""
    with graph.inserting_after(softmax):
        shifted = graph.call_function(aten.add.Tensor, (softmax, ENTROPY_EPS))
    with graph.inserting_after(shifted):
        log = graph.call_function(aten.log.default, (shifted,))
    with graph.inserting_after(log):
        product = graph.call_function(aten.mul.Tensor, (softmax, log))
    with graph.inserting_after(product):
        per_row = graph.call_function(aten.sum.dim_IntList, (product, [-1]))
    with graph.inserting_after(per_row):
        mean = graph.call_function(aten.mean.dim, (per_row, [0, 2]))
    with graph.inserting_after(mean):
        entropy = graph.call_function(aten.neg.default, (mean,))
    copy_meta(softmax, shifted, log, product, per_row, mean, entropy)
    return entropy


def _output_node(graph: fx.Graph) -> fx.Node:
    return next(node for node in reversed(graph.nodes) if node.op == "output")


def _flat_outputs(gm: fx.GraphModule) -> list:
    """The output node's values, flat, as the codegen sees them (pytree codegen: a flat list)."""
    value = _output_node(gm.graph).args[0]
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _set_outputs(gm: fx.GraphModule, logits, entropies: list) -> None:
    """Make the graph return ``logits`` alone (no entropies) or ``(logits, tuple(entropies))``."""
    graph = gm.graph
    output = _output_node(graph)
    codegen = graph._codegen
    pytree_info = getattr(codegen, "pytree_info", None)
    if pytree_info is not None and pytree_info.out_spec is not None:
        # Export graphs unflatten a flat output list with out_spec: keep the list flat, change the spec.
        from torch.utils import _pytree as pytree

        structure = logits if not entropies else (logits, tuple(entropies))
        output.args = (tuple([logits, *entropies]),)
        codegen.pytree_info = pytree_info._replace(out_spec=pytree.tree_structure(
            structure, is_leaf=lambda x: isinstance(x, fx.Node)))
    else:
        output.args = (logits if not entropies else (logits, tuple(entropies)),)


@register_pass("entropy-hooks", preserves_computation=True, phase=Phase.INSTRUMENT,
               options={"temperature": Option(str, choices=TEMPERATURES)},
               once="a second run would add every entropy output again",
               summary="every attention softmax also outputs its per-head entropy (training only; "
                       "temperature=head|position adds a learnable softmax temperature)")
def entropy_hooks(gm, temperature: str | bool = "none") -> PassResult:
    mode = {True: "head", False: "none"}.get(temperature, temperature)
    if mode not in TEMPERATURES:
        raise AeroError(f"entropy-hooks: temperature must be one of {', '.join(TEMPERATURES)}, not '{temperature}'")
    if has_entropy_outputs(gm):
        raise AeroError("entropy-hooks: the graph already has entropy outputs; strip them first")
    softmaxes = attention_softmaxes(gm)
    if not softmaxes:
        # Attention passes may have replaced every softmax: the graph still trains, with no entropy
        # outputs (its logits alone), and the regularizer has no head to act on.
        return PassResult(gm, 0, ["no attention softmax left: no entropy outputs, the regularizer has nothing to act on"])
    logits = _flat_outputs(gm)[0]
    entropies, info = [], []
    for index, op in enumerate(softmaxes):
        heads = _heads_of(gm, op.output)
        layer = op.layer if op.layer is not None else index
        if mode != "none":
            _insert_temperature(gm, op.output, f"layer{layer}", heads, mode)
        entropies.append(_insert_entropy(gm.graph, op.output))
        info.append(EntropyOutput(layer=layer, heads=heads, softmax=op.output.name))
    _set_outputs(gm, logits, entropies)
    set_graph_info(gm, entropy_outputs=tuple(info), temperature=mode)
    notes = [f"{len(entropies)} entropy outputs after the logits" + (f", temperature per {mode}" if mode != "none" else "")]
    return PassResult(gm, len(entropies), notes)


def has_entropy_outputs(gm: fx.GraphModule) -> bool:
    return bool(graph_info(gm).entropy_outputs)


def strip_entropy_outputs(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` (same parameter tensors) that returns the logits alone: for inference and export.

    The learnable temperatures stay: they are part of the model. A graph without entropy outputs is
    returned as a plain structural copy.
    """
    from aero_compile.capturing import clone_graph_module

    clone = clone_graph_module(gm)
    if has_entropy_outputs(clone):
        _set_outputs(clone, _flat_outputs(clone)[0], [])
        clone.graph.eliminate_dead_code()
        clone.recompile()
        set_graph_info(clone, entropy_outputs=())
    return clone


def row_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy of each attention row, -sum_j a_ij log(a_ij + eps): the quantity the hooks average.

    For passes that measure attention on a calibration batch in eager mode (linearize-heads); the
    graph the hooks insert computes exactly this, then its mean over batch and queries.
    """
    return -(probabilities * torch.log(probabilities + ENTROPY_EPS)).sum(-1)
