"""Concrete shapes and dtypes of every node at an analysed sequence length (batch 1 by default)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.fx as fx

from .capture import example_input


class TensorMeta(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype


class _MetaRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.metas: dict[fx.Node, TensorMeta] = {}

    def run_node(self, node: fx.Node):
        result = super().run_node(node)
        if isinstance(result, torch.Tensor):
            self.metas[node] = TensorMeta(tuple(result.shape), result.dtype)
        return result


def propagate_shapes(gm: fx.GraphModule, seq_len: int, batch: int = 1) -> dict[fx.Node, TensorMeta]:
    """Run the graph once on token ids of shape [batch, seq_len]; each tensor node's shape and dtype."""
    recorder = _MetaRecorder(gm)
    with torch.no_grad():
        recorder.run(example_input(gm, seq_len=seq_len, batch=batch))
    return recorder.metas


def numel(shape: tuple[int, ...] | None) -> int:
    if shape is None:
        return 0
    total = 1
    for dim in shape:
        total *= int(dim)
    return total
