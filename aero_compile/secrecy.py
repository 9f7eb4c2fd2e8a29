"""Who knows each value: PUBLIC (shapes, constants, buffers), OWNER (parameters only), SECRET.

Under two-party private inference the client's tokens are secret, the model owner holds the weights.
A value computed from shapes, constants and buffers (causal masks, rotary tables) is public: both
parties compute it locally. A value computed from parameters alone (``reciprocal(alpha)`` of
scale-ffn, a folded weight) is computed by the owner in the clear before the protocol starts, so it
costs nothing; it only costs when it meets a secret activation (dividing by it costs one product: the
owner shares its inverse, see ``owner_divisor``). Everything downstream of the tokens is secret.
"""

from __future__ import annotations

from enum import IntEnum

import torch.fx as fx

from .ops import OpKind, classify_node, target_name


class Secrecy(IntEnum):
    """Ordered so that the secrecy of a result is the max over its inputs."""

    PUBLIC = 0
    OWNER = 1
    SECRET = 2


def propagate_secrecy(gm: fx.GraphModule) -> dict[fx.Node, Secrecy]:
    """Secrecy of every node, in one pass over the graph (inputs are the client's secret tokens)."""
    parameter_names = {name for name, _ in gm.named_parameters(remove_duplicate=False)}
    levels: dict[fx.Node, Secrecy] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            levels[node] = Secrecy.SECRET
        elif node.op == "get_attr":
            levels[node] = Secrecy.OWNER if str(node.target) in parameter_names else Secrecy.PUBLIC
        elif node.op == "output":
            continue
        elif classify_node(gm, node) is OpKind.CONSTANT:
            levels[node] = Secrecy.PUBLIC  # arange/ones/sym_size: built from shapes alone
        else:
            inputs = [levels.get(arg, Secrecy.PUBLIC) for arg in node.all_input_nodes]
            levels[node] = max(inputs, default=Secrecy.PUBLIC)
    return levels


def owner_divisor(node: fx.Node, levels: dict[fx.Node, Secrecy]) -> fx.Node | None:
    """The divisor w of a tensor division ``x / w`` (a DIV-kind node) when only the model owner knows w.

    The owner inverts w in the clear and shares 1/w at setup, so the division costs one product: the
    cost analyzer prices it so and the private engines lower it so.
    """
    if target_name(node) == "reciprocal" or len(node.args) < 2:
        return None
    divisor = node.args[1]
    return divisor if isinstance(divisor, fx.Node) and levels.get(divisor) is Secrecy.OWNER else None


# Products whose owner-side factor is a model weight: fixed across queries, so an engine may mask it
# once per model (see targets/crypten/weight_masks.py) and open only the activation side per query.
FIXED_WEIGHT_PRODUCTS = frozenset({OpKind.LINEAR, OpKind.MATMUL, OpKind.EMBEDDING})
WEIGHT_MASK_MODES = ("per-model", "per-query")  # masked once per model (the default), or per product as before


def fixed_weights(node: fx.Node, kind: OpKind, levels: dict[fx.Node, Secrecy], metas) -> list[fx.Node]:
    """The weights a secret product reads: matrices (>= 2 dims) only the model owner knows.

    Owner values do not depend on the client's tokens, so they are the same for every query of a model;
    a bias (1 dim) is added locally and needs no mask. ``kind``: the node's OpKind (``ops.classify_node``);
    ``metas``: node -> TensorMeta (``shapes.py``). Empty unless ``node`` is a secret linear, matmul or
    embedding with a secret factor.
    """
    if levels.get(node) is not Secrecy.SECRET or kind not in FIXED_WEIGHT_PRODUCTS:
        return []
    inputs = node.all_input_nodes
    if not any(levels.get(arg) is Secrecy.SECRET for arg in inputs):
        return []
    return [arg for arg in dict.fromkeys(inputs)
            if levels.get(arg) is Secrecy.OWNER and arg in metas and len(metas[arg].shape) >= 2]
