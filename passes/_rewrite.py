"""Small graph-surgery helpers the passes share."""

from __future__ import annotations

import torch
import torch.fx as fx

from aero_compile.ops import Op


class Bypasser:
    """Make ops identities: their users read their (single) input instead.

    Ops are classified once, before any rewrite, so an op's recorded input may itself have been
    bypassed already (Bloom: the embedding LayerNorm feeds the first block's LayerNorm); the
    replacements map follows such chains to the live node.
    """

    def __init__(self):
        self.replacements: dict[fx.Node, fx.Node] = {}

    def __call__(self, op: Op) -> bool:
        if len(op.inputs) != 1 or len(op.outputs) != 1:
            return False
        source = op.inputs[0]
        while source in self.replacements:
            source = self.replacements[source]
        op.output.replace_all_uses_with(source)
        self.replacements[op.output] = source
        return True


def replace_op(op: Op, new_node: fx.Node) -> bool:
    """Users of ``op`` read ``new_node`` instead."""
    if len(op.outputs) != 1:
        return False
    op.output.replace_all_uses_with(new_node, delete_user_cb=lambda user: user is not new_node)
    return True


def _fresh_name(gm: fx.GraphModule, stem: str) -> str:
    stem = stem.replace(".", "_")
    name, index = stem, 0
    while hasattr(gm, name):
        index += 1
        name = f"{stem}_{index}"
    return name


def add_parameter(gm: fx.GraphModule, stem: str, value: torch.Tensor) -> str:
    """Register a new top-level parameter under a fresh name; returns the name for a get_attr node."""
    name = _fresh_name(gm, stem)
    gm.register_parameter(name, torch.nn.Parameter(value.detach().clone(), requires_grad=True))
    return name


def copy_meta(source: fx.Node, *targets: fx.Node, leave_module: bool = False) -> None:
    """New nodes inherit the module stack of the node they replace, so regions and layers still resolve.

    ``leave_module``: drop the innermost module, for a node that replaces a whole module (a ReLU
    standing in for a GELU module must not be classified as part of that GELU).
    """
    for target in targets:
        for key in ("nn_module_stack", "stack_trace"):
            if key in source.meta:
                target.meta[key] = source.meta[key]
        if leave_module and target.meta.get("nn_module_stack"):
            stack = dict(target.meta["nn_module_stack"])
            stack.pop(next(reversed(stack)))
            target.meta["nn_module_stack"] = stack


def add_buffer(gm: fx.GraphModule, stem: str, value: torch.Tensor) -> str:
    """Register a new top-level buffer (public: a constant both parties know); returns its name."""
    name = _fresh_name(gm, stem)
    gm.register_buffer(name, value.detach().clone())
    return name
