"""A tiny LM whose graph calls a custom op registered only in this process (helper module, not tests).

PyTorch and torch.export run it; nothing else knows the op: ONNX has no translation for it, and a
``.pt2`` that calls it loads only where this module has been imported.
"""

import torch


@torch.library.custom_op("aero_test::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@twice.register_fake
def _(x):
    return torch.empty_like(x)


class CustomOpLM(torch.nn.Module):
    """Embedding, the custom op, and (``head=True``) an LM head."""

    def __init__(self, head: bool = True):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16) if head else None

    def forward(self, input_ids):
        doubled = torch.ops.aero_test.twice(self.embed(input_ids))
        return doubled if self.head is None else self.head(doubled)
