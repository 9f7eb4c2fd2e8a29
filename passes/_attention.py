"""Graph surgery the attention passes share: public row lengths, causal visibility, and the swap of
one attention softmax for another normalization.

Everything built here from the scores' *shape* is public (the secrecy rule treats ``new_ones`` and
what is computed from it as public): both parties know which keys each query sees and how many, so
masking with it or dividing by it costs nothing under MPC. Attention is causal and without a KV
cache here (private prefill): query i sees keys 0..i.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from aero_compile.blocks import ATTENTION_FORM_KEY
from aero_compile.ops import Op

from ._rewrite import copy_meta, redirect_users

aten = torch.ops.aten


class AttentionBuilder:
    """Inserts nodes before one attention softmax, each inheriting its module stack and form tag."""

    def __init__(self, gm: fx.GraphModule, softmax: Op, form: str):
        self.gm, self.softmax, self.form = gm, softmax.output, form
        self.op = softmax
        self.scores = self.softmax.args[0]
        self.inserted: list[fx.Node] = []
        self._visible = self._inverse_length = None

    def call(self, target, *args) -> fx.Node:
        with self.gm.graph.inserting_before(self.softmax):
            node = self.gm.graph.call_function(target, tuple(args))
        copy_meta(self.softmax, node)
        node.meta[ATTENTION_FORM_KEY] = (self.form, self.softmax.name)
        self.inserted.append(node)
        return node

    def get_attr(self, name: str) -> fx.Node:
        with self.gm.graph.inserting_before(self.softmax):
            node = self.gm.graph.get_attr(name)
        self.inserted.append(node)
        return node

    def visible(self) -> fx.Node:
        """Public [queries, keys] 0/1: key j is visible from query i when j <= i."""
        if self._visible is None:
            queries = self.call(aten.sym_size.int, self.scores, 2)
            keys = self.call(aten.sym_size.int, self.scores, 3)
            ones = self.call(aten.new_ones.default, self.scores, [queries, keys])
            self._visible = self.call(aten.tril.default, ones)
        return self._visible

    def inverse_length(self) -> fx.Node:
        """Public [queries, 1]: 1 / (number of keys query i sees)."""
        if self._inverse_length is None:
            lengths = self.call(aten.sum.dim_IntList, self.visible(), [-1], True)
            self._inverse_length = self.call(aten.reciprocal.default, lengths)
        return self._inverse_length

    def normalize(self, weights: fx.Node, norm: str, eps: float) -> fx.Node:
        """weights / (number of visible keys), or weights / (sum of the row's weights).

        The sum is taken as a mean over the visible keys (``sum * 1/length``, a public scaling) before
        its reciprocal, so the secret reciprocal sees values near the weights' scale, not up to T times
        larger: CrypTen's Newton reciprocal diverges for inputs above ~600. ``eps`` keeps an all-zero
        row (a ReLU row with no positive score) finite: its weights are 0 and stay 0.
        """
        inverse_length = self.inverse_length()
        if norm == "length":
            return self.call(aten.mul.Tensor, weights, inverse_length)
        row_sum = self.call(aten.sum.dim_IntList, weights, [-1], True)
        row_mean = self.call(aten.mul.Tensor, row_sum, inverse_length)
        if eps:
            row_mean = self.call(aten.add.Tensor, row_mean, eps)
        inverse = self.call(aten.reciprocal.default, row_mean)
        scaled = self.call(aten.mul.Tensor, weights, inverse)
        return self.call(aten.mul.Tensor, scaled, inverse_length)

    def replace_softmax(self, probabilities: fx.Node) -> None:
        """Users of the softmax read ``probabilities`` instead (the softmax then dies; under gradual
        conversion they read a blend of the two)."""
        redirect_users(self.op, probabilities)


def check_choice(pass_name: str, option: str, value, choices: tuple[str, ...]) -> str:
    from aero_compile.errors import AeroError

    if value not in choices:
        raise AeroError(f"{pass_name}: {option} must be one of {', '.join(choices)}, not '{value}'")
    return value
