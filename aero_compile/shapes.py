"""Concrete shapes and dtypes of every node at an analysed sequence length (batch 1 by default)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.fx as fx

from .capturing import example_input


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
    """Each tensor node's shape and dtype for token ids of shape [batch, seq_len].

    Runs the graph on fake tensors (shapes only, no arithmetic: a GPT-2 small at T=1024 costs
    milliseconds); a graph with an op that fake tensors cannot run is run for real instead.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    inputs = example_input(gm, seq_len=seq_len, batch=batch)
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
            recorder = _MetaRecorder(gm)
            recorder.run(mode.from_tensor(inputs))
        return recorder.metas
    except Exception:  # e.g. an op without a fake (meta) kernel
        recorder = _MetaRecorder(gm)
        with torch.no_grad():
            recorder.run(inputs)
        return recorder.metas


def numel(shape: tuple[int, ...] | None) -> int:
    if shape is None:
        return 0
    total = 1
    for dim in shape:
        total *= int(dim)
    return total
