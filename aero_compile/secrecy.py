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
