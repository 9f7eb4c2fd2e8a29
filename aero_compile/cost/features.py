"""The sizes a protocol's cost depends on, read off one classified op and the graph's shapes.

Features (all for the analysed [batch, seq_len]):

* ``calls``: 1 per op.
* ``elements``: scalars the op transforms (its largest secret operand: a softmax's scores, a max's input).
* ``length``: that operand's last dimension (the reduced one for softmax, norms, max); ``rows`` = elements / length.
* ``operand_elements``: scalars of every non-public operand of a product (activation and weight): what
  Beaver-triple multiplication opens. An embedding counts its token ids one-hot (ids x vocabulary).
* ``io_elements``: secret activation in + result out of a product: what an HE matrix product ships.
* ``macs``: multiply-accumulates of a product (compute time).
"""

from __future__ import annotations

import torch.fx as fx

from ..ops import NONLINEAR, Op, OpKind
from ..shapes import TensorMeta, numel
from ..secrecy import Secrecy

PRODUCTS = frozenset({OpKind.LINEAR, OpKind.MATMUL, OpKind.MUL, OpKind.EMBEDDING})
# Kinds that never communicate under additive secret sharing.
LOCAL = frozenset({OpKind.ELEMENTWISE, OpKind.REDUCE, OpKind.RESHAPE, OpKind.NOOP, OpKind.CONSTANT})


def operands(op: Op, metas: dict[fx.Node, TensorMeta]) -> list[fx.Node]:
    """Tensor values the op reads from outside itself, weights and buffers included, in argument order."""
    members = set(op.nodes)
    seen: dict[fx.Node, None] = {}
    for node in op.nodes:
        for arg in node.all_input_nodes:
            if arg not in members and arg in metas:
                seen.setdefault(arg, None)
    return list(seen)


def cost_kind(op: Op, args: list[fx.Node], levels: dict[fx.Node, Secrecy]) -> OpKind | None:
    """The protocol this op runs, or None when it is local (no secret input, or secret x public)."""
    if op.kind in LOCAL:
        return None
    secret = [a for a in args if levels.get(a, Secrecy.PUBLIC) is Secrecy.SECRET]
    if not secret:
        return None  # public, or the owner computes it in the clear (e.g. reciprocal(alpha))
    if op.kind in PRODUCTS:
        hidden = [a for a in args if levels.get(a, Secrecy.PUBLIC) >= Secrecy.OWNER]
        return op.kind if len(hidden) >= 2 else None  # secret x public is a local scaling
    if op.kind is OpKind.DIV and len(args) >= 2 and levels.get(args[-1]) is not Secrecy.SECRET:
        # x / w with w the owner's: the owner inverts w in the clear, a secret product remains
        return OpKind.MUL if levels.get(args[-1]) is Secrecy.OWNER else None
    return op.kind


def op_features(op: Op, kind: OpKind, args: list[fx.Node], levels: dict[fx.Node, Secrecy],
                metas: dict[fx.Node, TensorMeta]) -> dict[str, float]:
    """Feature values of one costed op (see the module docstring)."""
    out_meta = metas.get(op.output)
    out_elements = numel(out_meta.shape) if out_meta else 0
    secret = [a for a in args if levels.get(a) is Secrecy.SECRET]
    main = max(secret, key=lambda a: numel(metas[a].shape))
    main_shape = metas[main].shape
    elements = numel(main_shape) if kind in NONLINEAR else out_elements
    length = int(main_shape[-1]) if main_shape else 1
    features = {"calls": 1.0, "elements": float(elements), "length": float(length),
                "rows": float(elements // max(length, 1))}
    if kind in PRODUCTS:
        hidden = [a for a in args if levels.get(a, Secrecy.PUBLIC) >= Secrecy.OWNER]
        if kind is OpKind.EMBEDDING:
            weight = next(a for a in hidden if levels[a] is Secrecy.OWNER)
            vocab, width = metas[weight].shape[0], metas[weight].shape[-1]
            one_hot = numel(main_shape) * vocab
            features["operand_elements"] = float(one_hot + numel(metas[weight].shape))
            features["io_elements"] = float(one_hot + out_elements)
            features["macs"] = float(one_hot * width)
        else:
            features["operand_elements"] = float(sum(numel(metas[a].shape) for a in hidden))
            features["io_elements"] = float(sum(numel(metas[a].shape) for a in secret) + out_elements)
            contraction = 1 if kind is OpKind.MUL else length
            features["macs"] = float(out_elements * contraction)
    return features
