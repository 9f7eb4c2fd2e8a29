"""Structure on top of the classifier: FFN sub-blocks, attention softmaxes, the parts of a linear layer.

Passes ask these questions about *groups* of ops (which nodes are layer 3's FFN? which softmaxes are
attention probabilities? what weight does this addmm apply? how many layers, and which did a pass
miss?); they answer from ``ops.classify_graph`` and module stacks, so op names are still matched in
``ops.py`` alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.fx as fx

from .ops import (
    TRANSPOSES, ACTIVATIONS, Op, OpKind, clean_module_path, external_inputs, external_outputs, attr_value,
    classify_graph, classify_node, is_log_softmax, is_tensor_add, layer_of, module_stack, target_name,
)

# Module names that hold a transformer block's feed-forward network.
_FFN_ATTR = re.compile(r"^(mlp|feed_forward|ffn|fc|mlp_block|feedforward)$")
_FFN_CLASS = re.compile(r"MLP|FeedForward|FFN|Mlp")


@dataclass(eq=False)
class FFNBlock:
    """A transformer block's feed-forward sub-network, as one region of the graph."""

    layer: int
    module_path: str
    nodes: list[fx.Node]
    input: fx.Node
    output: fx.Node


def ffn_blocks(gm: fx.GraphModule) -> list[FFNBlock]:
    """Feed-forward sub-blocks (modules named mlp/feed_forward/ffn, or classes named *MLP*), by layer."""
    by_key: dict[str, tuple[str, list[fx.Node]]] = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        for key, path, cls in module_stack(node):  # outermost first: the block, not a sub-layer
            leaf = path.rsplit(".", 1)[-1]
            if (_FFN_ATTR.match(leaf) or _FFN_CLASS.search(cls)) and layer_of(path) is not None:
                by_key.setdefault(key, (clean_module_path(path), []))[1].append(node)
                break
    blocks = []
    for path, nodes in by_key.values():
        inputs = external_inputs(nodes)
        outputs = external_outputs(nodes)
        # An MLP module that adds the residual itself (Bloom) ends in that add: leave it to the
        # structural search, which stops at the second linear.
        if len(inputs) == 1 and len(outputs) == 1 and not is_tensor_add(outputs[0]):
            blocks.append(FFNBlock(layer=layer_of(path), module_path=path, nodes=nodes,
                                   input=inputs[0], output=outputs[0]))
    found = {b.layer for b in blocks}
    blocks += [b for b in _structural_ffn_blocks(gm) if b.layer not in found]
    blocks.sort(key=lambda b: b.layer)
    return blocks


def ffn_activations(gm: fx.GraphModule, kinds: frozenset[OpKind] | set[OpKind]) -> tuple[list[Op], list[Op]]:
    """Ops of ``kinds`` inside FFN sub-blocks, and those outside any (left alone by FFN passes).

    Activation passes act on FFN activations only: a ReLU or square elsewhere (an attention
    normalization, a router) is part of another computation and must survive them.
    """
    inside_ffn = {node for block in ffn_blocks(gm) for node in block.nodes}
    inside, outside = [], []
    for op in classify_graph(gm):
        if op.kind in kinds:
            (inside if all(node in inside_ffn for node in op.nodes) else outside).append(op)
    return inside, outside


def outside_ffn_note(outside: list[Op]) -> list[str]:
    """The pass note for activations an FFN pass left alone because no FFN block holds them."""
    if not outside:
        return []
    names = ", ".join(f"{op.kind.value} '{op.name}'" for op in outside[:5]) + (" ..." if len(outside) > 5 else "")
    return [f"left {len(outside)} activation(s) outside FFN blocks untouched: {names}"]


_FFN_INTERIOR = ACTIVATIONS | {OpKind.NOOP, OpKind.RESHAPE}


def _structural_ffn_blocks(gm: fx.GraphModule) -> list[FFNBlock]:
    """FFNs without an FFN module (OPT's fc1/fc2 sit on the layer itself, Bloom's MLP also takes the
    residual): a linear fed, through activations and views only, by another linear."""
    ops = classify_graph(gm)
    op_of = {node: op for op in ops for node in op.nodes}
    blocks = []
    for op in ops:
        if op.kind is not OpKind.LINEAR or op.layer is None or not op.inputs:
            continue
        def feeds_only(producer: Op, consumer: Op) -> bool:
            return set(producer.output.users) <= set(consumer.nodes)

        chain, current = [op], op_of.get(op.inputs[0])
        while current is not None and current.kind in _FFN_INTERIOR and len(current.inputs) == 1 \
                and feeds_only(current, chain[-1]):
            chain.append(current)
            current = op_of.get(current.inputs[0])
        if current is None or current.kind is not OpKind.LINEAR or not feeds_only(current, chain[-1]) \
                or current.layer != op.layer or not current.inputs:
            continue
        chain.append(current)
        nodes = [node for member in reversed(chain) for node in member.nodes]
        blocks.append(FFNBlock(layer=op.layer, module_path=op.module_path.rsplit(".", 1)[0], nodes=nodes,
                               input=current.inputs[0], output=op.output))
    return blocks


_RESIDUAL_PASS_THROUGH = {OpKind.NOOP, OpKind.RESHAPE}


@dataclass(frozen=True)
class ResidualAdd:
    """Where a sub-block's output joins the residual stream: ``add = ffn_side + residual``."""

    add: fx.Node
    ffn_side: fx.Node  # the operand that carries the sub-block's output
    residual: fx.Node  # the other operand: the stream the sub-block is added to


def residual_add(gm: fx.GraphModule, ffn_output: fx.Node) -> ResidualAdd | None:
    """The add that merges an FFN's output into the residual stream, seen through views and scalings."""
    node = ffn_output
    while True:
        if len(node.users) != 1:
            return None
        user = next(iter(node.users))
        if is_tensor_add(user):
            residual = user.args[1] if user.args[0] is node else user.args[0]
            return ResidualAdd(user, node, residual)
        kind = classify_node(gm, user)
        if kind in _RESIDUAL_PASS_THROUGH or (kind in (OpKind.MUL, OpKind.ELEMENTWISE) and user.args[0] is node):
            node = user  # dropout, a view, or a scale already applied
            continue
        return None


@dataclass
class LinearParts:
    """A linear map y = x @ weight.T + bias, read off one LINEAR node."""

    input: fx.Node
    weight: torch.Tensor  # [out_features, in_features]
    bias: torch.Tensor | None


def _param_through_views(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    """A parameter seen through t()/transpose (as mm/matmul against W.T are exported)."""
    transposed = False
    while node.op == "call_function" and target_name(node) in TRANSPOSES:
        transposed = not transposed
        node = node.args[0]
    if node.op != "get_attr":
        return None
    value = attr_value(gm, node).detach()
    return value.t() if transposed else value


def linear_parts(gm: fx.GraphModule, node: fx.Node) -> LinearParts | None:
    """Input, weight [out, in] and bias of a LINEAR node, or None if they cannot be read off."""
    if classify_node(gm, node) is not OpKind.LINEAR:
        return None
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if isinstance(module, torch.nn.Linear):
            bias = module.bias.detach() if module.bias is not None else None
            return LinearParts(node.args[0], module.weight.detach(), bias)
        return None
    name = target_name(node)
    args = list(node.args)
    if name == "linear":
        weight_node = args[1]
        bias_node = args[2] if len(args) > 2 else node.kwargs.get("bias")
        if not (isinstance(weight_node, fx.Node) and weight_node.op == "get_attr"):
            return None
        bias = attr_value(gm, bias_node).detach() if isinstance(bias_node, fx.Node) and bias_node.op == "get_attr" else None
        if isinstance(bias_node, fx.Node) and bias is None:
            return None
        return LinearParts(args[0], attr_value(gm, weight_node).detach(), bias)
    if name in ("addmm", "mm", "matmul"):
        if name == "addmm":
            if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                return None
            bias_node, x, w_node = args[0], args[1], args[2]
        else:
            bias_node, x, w_node = None, args[0], args[1]
        w_in_out = _param_through_views(gm, w_node)  # x @ W: W is [in, out]
        if w_in_out is None or w_in_out.dim() != 2:
            return None
        bias = None
        if bias_node is not None:
            if not (isinstance(bias_node, fx.Node) and bias_node.op == "get_attr"):
                return None
            bias = attr_value(gm, bias_node).detach()
        return LinearParts(x, w_in_out.t(), bias)
    return None


def attention_softmaxes(gm: fx.GraphModule) -> list[Op]:
    """The attention softmaxes (probabilities over keys), in execution order: for entropy hooks.

    A SOFTMAX op qualifies when it is a single node giving probabilities (log_softmax does not) and,
    where export recorded its shape, a 4-D [batch, heads, queries, keys] tensor normalized over the
    last dim.
    """
    found = []
    for op in classify_graph(gm):
        if op.kind is not OpKind.SOFTMAX or op.is_region or is_log_softmax(op.output):
            continue
        node = op.output
        val = node.meta.get("val")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
        if isinstance(val, torch.Tensor):
            if val.dim() != 4 or dim not in (-1, 3):
                continue
        found.append(op)
    return found


@dataclass(eq=False)
class AttentionSite:
    """One attention softmax with what surrounds it: its scores and the product that mixes values."""

    softmax: Op
    scores: fx.Node  # the softmax input, masked: [batch, heads, queries, keys]
    mix: fx.Node | None  # matmul(probabilities, values), if found through no-ops
    values: fx.Node | None  # [batch, heads, keys, head_dim]

    @property
    def layer(self) -> int | None:
        return self.softmax.layer


def attention_sites(gm: fx.GraphModule) -> list[AttentionSite]:
    """Every attention softmax with its scores, and the probabilities-times-values product it feeds."""
    sites = []
    for op in attention_softmaxes(gm):
        probabilities = op.output
        node, mix = probabilities, None
        while True:
            # export's metadata asserts read the probabilities and feed nothing: not a consumer
            users = [u for u in node.users if u.users or classify_node(gm, u) is not OpKind.NOOP]
            if len(users) != 1:
                break
            user = users[0]
            kind = classify_node(gm, user)
            if kind is OpKind.MATMUL and user.args[0] is node:
                mix = user
                break
            if kind is not OpKind.NOOP:
                break
            node = user  # dropout in eval, a cast
        values = mix.args[1] if mix is not None and isinstance(mix.args[1], fx.Node) else None
        sites.append(AttentionSite(op, probabilities.args[0], mix, values))
    return sites


ATTENTION_FORM_KEY = "aero_attention_form"  # node.meta tag the attention passes set on what they insert


def attention_forms(gm: fx.GraphModule) -> dict[str, int]:
    """How many attention normalizations of each form the graph has (softmax, relu-length, ...).

    The attention passes tag the nodes they insert; an untagged attention softmax is ``softmax``.
    These are attention normalizations, never FFN activations: FFN passes leave them alone.
    """
    forms: dict[str, set] = {}
    for node in gm.graph.nodes:
        form = node.meta.get(ATTENTION_FORM_KEY)
        if form:
            forms.setdefault(form[0], set()).add(form[1])
    counts = {name: len(instances) for name, instances in forms.items()}
    softmaxes = len(attention_softmaxes(gm))
    if softmaxes:
        counts["softmax"] = softmaxes
    return counts


def model_layers(gm: fx.GraphModule) -> int:
    """How many blocks the model has: distinct layer indices in its ops' module paths (0 if none)."""
    return len({op.layer for op in classify_graph(gm) if op.layer is not None})


def missing_layers_note(gm: fx.GraphModule, found: set[int], what: str, consequence: str) -> list[str]:
    """The note of a pass that found ``what`` in fewer layers than the model has (empty when it found all)."""
    layers = {op.layer for op in classify_graph(gm) if op.layer is not None}
    missing = sorted(layers - set(found))
    if not missing:
        return []
    shown = ", ".join(str(layer) for layer in missing[:8]) + (" ..." if len(missing) > 8 else "")
    return [f"found {what} in {len(layers) - len(missing)} of the model's {len(layers)} layers: none recognised in "
            f"layer(s) {shown}, {consequence}"]
