"""fold-scales: products of the residual stream with scalars (scale-ffn's alpha and beta) move into weights.

Before (one layer after ``all``): ``x_sa = x + Wo·a``;  ``out = beta·x_sa + (1/alpha)·(W·x_sa + b)``
After: the same values, each stream tensor computed as ``v / k(v)`` for an owner-known scalar ``k``,
so that ``out = x_sa' + W'·x_sa' + b'`` with ``W' = W·k(x_sa)/k(out)``, ``b' = b/k(out)``, and ``Wo``,
the embeddings and every linear layer reading the stream rescaled likewise. No product with a scalar
is left: under MPC each was a secret product per stream element (24 per GPT-2 small forward, 0.35 GB
under bumblebee at T=128). Preserves the computation (verified); the scalars are fixed at their
current values, so run it on a trained model, for inference (training would no longer learn them).

The rewrite applies to a *component*: stream tensors joined by adds, scalar products and views. It is
rewritten only if every tensor entering it is made by a linear layer, an embedding or a parameter (their
weights absorb 1/k) and every tensor leaving it goes into a linear layer (its weight absorbs k); a
component that also feeds anything else (a LayerNorm, a softmax, the output) is left as is, and named.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from aero_compile.blocks import linear_parts
from aero_compile.capturing import remove_dead_code
from aero_compile.ops import OpKind, attr_value, classify_node, target_name
from aero_compile.pass_registry import PassResult, Phase, register_pass
from aero_compile.secrecy import Secrecy, propagate_secrecy
from aero_compile.shapes import numel, propagate_shapes

from ._rewrite import add_parameter, copy_meta

_VIEWS = {OpKind.RESHAPE, OpKind.NOOP}


class _Unfoldable(Exception):
    """A component that cannot be rescaled, with the reason for the notes."""


def _constant_scalar(gm, node, levels, metas) -> float | None:
    """The value of ``node`` if it is a number or a one-element tensor known before the protocol starts."""
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return float(node)
    if not isinstance(node, fx.Node) or levels.get(node) not in (Secrecy.PUBLIC, Secrecy.OWNER):
        return None
    meta = metas.get(node)
    if meta is None or numel(meta.shape) != 1:
        return None
    try:
        return float(_evaluate(gm, node))
    except _Unfoldable:  # e.g. a method call on a weight: not a scalar this pass can fold
        return None


def _evaluate(gm: fx.GraphModule, node: fx.Node):
    """Compute a value that depends on weights and constants only (the owner does this in the clear)."""
    if node.op == "get_attr":
        return attr_value(gm, node).detach()
    if node.op != "call_function":
        raise _Unfoldable(f"{node.name} is not computable from weights")
    args = fx.node.map_arg(node.args, lambda n: _evaluate(gm, n))
    kwargs = fx.node.map_arg(node.kwargs, lambda n: _evaluate(gm, n))
    with torch.no_grad():
        return node.target(*args, **kwargs)


class _Stream:
    """How each stream node relates to its stream inputs: v = ratio · input (add: ratio 1 for both)."""

    def __init__(self, gm, levels, metas):
        self.gm, self.levels, self.metas = gm, levels, metas

    def links(self, node: fx.Node) -> list[tuple[fx.Node, float]] | None:
        """(input, ratio) pairs if ``node`` is an edge of the stream, else None."""
        if node.op != "call_function":
            return None
        name, args = target_name(node), node.args
        if name == "add" and len(args) == 2 and all(isinstance(a, fx.Node) for a in args) \
                and node.kwargs.get("alpha", 1) == 1:
            return [(args[0], 1.0), (args[1], 1.0)]
        if name in ("mul", "div") and len(args) == 2:
            for tensor, other in ((args[0], args[1]), (args[1], args[0])):
                if not isinstance(tensor, fx.Node) or self.levels.get(tensor) is not Secrecy.SECRET:
                    continue
                if name == "div" and tensor is not args[0]:
                    continue
                scalar = _constant_scalar(self.gm, other, self.levels, self.metas)
                if scalar is not None and scalar != 0.0:
                    return [(tensor, scalar if name == "mul" else 1.0 / scalar)]
            return None
        if classify_node(self.gm, node) in _VIEWS and args and isinstance(args[0], fx.Node) \
                and self._keeps_elements(node, args[0]):
            return [(args[0], 1.0)]
        return None

    def _keeps_elements(self, node, source) -> bool:
        before, after = self.metas.get(source), self.metas.get(node)
        return before is not None and after is not None and numel(before.shape) == numel(after.shape)


def _component(stream: _Stream, seed: fx.Node) -> tuple[dict[fx.Node, float], set[fx.Node]]:
    """Scale k of every stream node joined to ``seed`` (k(seed's input) = 1), and the edge nodes."""
    scales: dict[fx.Node, float] = {}
    edges: set[fx.Node] = set()

    def assign(node, k):
        if node in scales:
            if abs(scales[node] - k) > 1e-9 * max(abs(k), abs(scales[node])):
                raise _Unfoldable(f"{node.name} would need two different scales")
            return
        scales[node] = k
        pending.append((node, k))

    start = stream.links(seed)[0][0]
    scales[start] = 1.0
    pending = [(start, 1.0)]
    while pending:
        node, k = pending.pop()
        links = stream.links(node)
        if links is not None:
            edges.add(node)
            for source, ratio in links:
                assign(source, k / ratio)
        for user in node.users:
            user_links = stream.links(user)
            if user_links is not None:
                ratio = next(r for source, r in user_links if source is node)
                assign(user, k * ratio)
    return scales, edges


def _plan(gm, stream: _Stream, scales, edges):
    """Which weights absorb which factor; raises _Unfoldable when the component cannot be rescaled."""
    linears: dict[fx.Node, list[float]] = {}  # linear node -> [k of its input, k of its output]
    tables: dict[fx.Node, float] = {}  # embedding or parameter node -> k of its output
    for node, k in scales.items():
        if node not in edges:  # a tensor entering the stream
            if linear_parts(gm, node) is not None:
                linears.setdefault(node, [1.0, 1.0])[1] = k
            elif classify_node(gm, node) is OpKind.EMBEDDING and isinstance(node.args[0], fx.Node) \
                    and node.args[0].op == "get_attr":
                tables[node] = k
            elif node.op == "get_attr" and stream.levels.get(node) is Secrecy.OWNER:
                tables[node] = k
            else:
                raise _Unfoldable(f"{node.name} ({target_name(node) or node.op}) enters the stream and has no weight to rescale")
        for user in node.users:
            if user in edges:
                continue  # inside the stream; a linear that both reads and feeds it is handled as both
            parts = linear_parts(gm, user)
            if parts is None or parts.input is not node:
                raise _Unfoldable(f"{node.name} feeds {user.name} ({target_name(user) or user.op}), not a linear layer")
            linears.setdefault(user, [1.0, 1.0])[0] = k
    return linears, tables


def _rescale(gm, linears, tables) -> None:
    graph = gm.graph
    for node, (k_in, k_out) in linears.items():
        parts = linear_parts(gm, node)
        dtype = parts.weight.dtype
        weight = add_parameter(gm, f"{node.name}_rescaled_weight", (parts.weight.double() * (k_in / k_out)).to(dtype))
        args = [parts.input]
        with graph.inserting_before(node):
            args.append(graph.get_attr(weight))
            if parts.bias is not None:
                args.append(graph.get_attr(add_parameter(gm, f"{node.name}_rescaled_bias",
                                                         (parts.bias.double() / k_out).to(dtype))))
            replacement = graph.call_function(torch.ops.aten.linear.default, tuple(args))
        copy_meta(node, replacement)
        node.replace_all_uses_with(replacement)
    for node, k in tables.items():
        source = node if node.op == "get_attr" else node.args[0]
        value = attr_value(gm, source)
        with graph.inserting_before(node):
            table = graph.get_attr(add_parameter(gm, f"{source.name}_rescaled", (value.double() / k).to(value.dtype)))
        if node.op == "get_attr":
            node.replace_all_uses_with(table)
        else:
            node.args = (table,) + tuple(node.args[1:])


@register_pass("fold-scales", preserves_computation=True, phase=Phase.FOLD,
               summary="products of the residual stream with scalars (scale-ffn's alpha, beta) folded into the "
                       "weights around them (for inference: the scalars stop being trainable)")
def fold_scales(gm) -> PassResult:
    levels = propagate_secrecy(gm)
    metas = propagate_shapes(gm, seq_len=3, batch=2)
    stream = _Stream(gm, levels, metas)
    seeds = [node for node in gm.graph.nodes if target_name(node) in ("mul", "div") and stream.links(node)
             and any(levels.get(a) is Secrecy.OWNER for a in node.all_input_nodes)]
    done: set[fx.Node] = set()
    folded, left = 0, {}
    for seed in seeds:
        if seed in done:
            continue
        done.add(seed)
        try:
            scales, edges = _component(stream, seed)
            done |= edges
            linears, tables = _plan(gm, stream, scales, edges)
        except _Unfoldable as reason:
            left.setdefault(str(reason), []).append(seed.name)
            continue
        # Which argument of each scalar product is the stream tensor (the rescale replaces producers).
        products = {node: node.args.index(stream.links(node)[0][0]) for node in edges
                    if target_name(node) in ("mul", "div")}
        _rescale(gm, linears, tables)
        for node, tensor_index in products.items():
            node.replace_all_uses_with(node.args[tensor_index])
        folded += len(products)
        remove_dead_code(gm)
        levels = propagate_secrecy(gm)
        metas = propagate_shapes(gm, seq_len=3, batch=2)
        stream = _Stream(gm, levels, metas)
    notes = [f"{len(names)} scalar product(s) left as is ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): "
             f"{reason}" for reason, names in left.items()]
    if not seeds:
        notes.append("no product of the stream with a scalar weight")
    return PassResult(gm, folded, notes)
