"""Small graph-surgery helpers the passes share."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable

import torch
import torch.fx as fx

from aero_compile.ops import Op

# Gradual conversion (``aero-compile train --gradual``) sets a hook here while one blending pass runs:
# instead of making users read the new form, a rewrite asks the hook for the node they should read (a
# blend of the old op into the new form that training moves from 0 to 1). The hook lives with the
# training code; passes only call it, so nothing here imports from above.
_BLEND_HOOK: ContextVar[Callable[[Op, fx.Node], fx.Node] | None] = ContextVar("aero_blend_hook", default=None)


@contextmanager
def blending(hook: Callable[[Op, fx.Node], fx.Node]):
    """While inside, Bypasser, replace_op and attention-softmax replacement blend instead of replacing."""
    token = _BLEND_HOOK.set(hook)
    try:
        yield
    finally:
        _BLEND_HOOK.reset(token)


def redirect_users(op: Op, new_node: fx.Node) -> None:
    """Users of ``op`` read ``new_node`` (or, under ``blending``, the hook's blend of op into new_node)."""
    hook = _BLEND_HOOK.get()
    target = hook(op, new_node) if hook is not None else new_node
    op.output.replace_all_uses_with(target, delete_user_cb=lambda user: user is not target and user is not new_node)


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
        if _BLEND_HOOK.get() is not None and len(op.nodes) == 1 and isinstance(op.output.args[0], fx.Node):
            # Blending keeps the earlier ops alive: the live input is what the node reads now.
            redirect_users(op, op.output.args[0])
        else:
            redirect_users(op, source)
        self.replacements[op.output] = source
        return True


def replace_op(op: Op, new_node: fx.Node) -> bool:
    """Users of ``op`` read ``new_node`` instead."""
    if len(op.outputs) != 1:
        return False
    redirect_users(op, new_node)
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
