"""How a private engine turns one secret node into its operations: one walk, the engine's two tables.

    TABLE = DispatchTable(engine="SPU", source="targets/spu/dispatch.py", arguments=_arguments,
                          kind_lowerings=KIND_LOWERINGS, node_lowerings=NODE_LOWERINGS)
    value = TABLE.lower(ctx, node)       # ctx: a LoweringContext (values, token nodes, inverses, scales)

Every engine asks ``ops.classify_node`` what the node is, in the same order: a view of the token ids
becomes the same view of their one-hot (vocabulary last); a kind with its own protocol (softmax,
norms, activations, linear algebra) goes through ``kind_lowerings``; structural and local ops and the
nodes inside Python-written regions go through ``node_lowerings``, keyed by ``ops.target_name``. An
op with none is a one-line AeroError naming the node and the file to add a lowering to. The engine
supplies only its tables and how it reads a node's arguments (``arguments(ctx, node, kind)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

import torch
import torch.fx as fx

from aero_compile.errors import AeroError
from aero_compile.ops import OpKind, classify_node, target_name

# Keyword arguments that only place or type a tensor: meaningless on shares, dropped before a node lowering.
_PLACEMENT_KWARGS = ("memory_format", "dtype", "device", "layout")


def view_sizes(sizes) -> list[int]:
    """The sizes of ``view(x, *sizes)`` or ``view(x, sizes)``, as plain ints."""
    sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], (list, tuple, torch.Size)) else sizes
    return [int(size) for size in sizes]


def arg(args, kwargs, index: int, name: str, default=None):
    """An aten argument given by position or by keyword (``eps`` of layer_norm, ``dim`` of softmax)."""
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def lower_noop(ctx, node: fx.Node, args, kwargs):
    """OpKind.NOOP on any engine: the value passes through (casts, clones, dropout in eval, export's guards)."""
    if target_name(node) == "native_dropout":
        return (args[0], None)
    return args[0] if args else None


class LoweringContext:
    """What a ``DispatchTable``'s lowerings read from the engine's program, besides ``value(node)``.

    An engine's program (or its calibration form) subclasses this and sets ``gm``, and where it has them
    ``token_nodes`` (the ids and their views), ``inverses`` (division node -> the owner's shared 1/w) and
    ``scales`` (node name -> the owner's public inv_sqrt scale, ``private.norm_scaling``).
    """

    gm: fx.GraphModule
    token_nodes: frozenset = frozenset()
    inverses: Mapping = MappingProxyType({})
    scales: Mapping = MappingProxyType({})

    def value(self, node: fx.Node):
        raise NotImplementedError

    def owner_inverse(self, node: fx.Node):
        """1/w shared by the owner for the division ``node`` = x / w (None unless w is the owner's)."""
        return self.inverses.get(node)

    def inv_sqrt_scale(self, node: fx.Node) -> float:
        """The public power of 4 the owner chose for this node's inv_sqrt (1.0 if none)."""
        return float(self.scales.get(node.name, 1.0))


@dataclass(frozen=True)
class DispatchTable:
    """One engine's lowerings: by OpKind, by operator name, and how it reads a node's arguments."""

    engine: str  # named in the refusal ("no CrypTen lowering for ...")
    source: str  # the file to add a lowering to, named in the refusal
    kind_lowerings: dict[OpKind, Callable]  # (ctx, node, args, kwargs) -> value
    node_lowerings: dict[str, Callable]  # (*args, **kwargs) -> value; needs a "reshape" for token views
    arguments: Callable  # (ctx, node, kind) -> (args, kwargs) with every node replaced by its value

    def lower(self, ctx, node: fx.Node):
        """The engine's value of one secret node (its arguments are already in ``ctx``)."""
        kind = classify_node(ctx.gm, node)
        args, kwargs = self.arguments(ctx, node, kind)
        if node in ctx.token_nodes:  # a view of the ids: the same view of the one-hot, vocabulary last
            one_hot = args[0]
            return self.node_lowerings["reshape"](one_hot, *view_sizes(args[1:]), one_hot.shape[-1])
        if kind in self.kind_lowerings:
            return self.kind_lowerings[kind](ctx, node, args, kwargs)
        lowering = self.node_lowerings.get(target_name(node))
        if lowering is None:
            raise AeroError(f"no {self.engine} lowering for node '{node.name}' ({target_name(node)}, {kind.value}) "
                            f"on secret data: add one to {self.source}")
        kwargs = {k: v for k, v in kwargs.items() if k not in _PLACEMENT_KWARGS}
        return lowering(*args, **kwargs)
