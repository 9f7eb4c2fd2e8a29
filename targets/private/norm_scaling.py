"""Public scales that keep a norm's inv_sqrt where fixed point computes it well; the model owner computes them.

Both engines need them: CrypTen's Newton iteration converges only near its sweet spot (below), and
in SPU's 18-bit fixed point the variance of a 0.02-scale activation (4e-4, a freshly initialised
model's) is computed from squares truncated to 4e-6 (a LayerNorm then errs by 4% at that scale,
18% at 0.005; measured), while at the sweet spot it is exact to 5e-4.

CrypTen's inv_sqrt starts Newton's method from 2.2 exp(-(x/2 + 0.2)) + 0.2 - x/1024, closest to
1/sqrt(x) near x = 3, and runs 3 iterations: an argument of 4e-4 (the variance of a freshly
initialised 64-wide model) comes back ~7 instead of 50, and a large one diverges. Norms are
scale-invariant, so ``norm(x) = norm(c x)`` with eps scaled by c^2: multiplying by a public power of
two is local (no rounds, no bytes) and moves the argument next to 3.

``inv_sqrt_scales(gm, input_ids)`` runs the model in plaintext on tokens the owner picks (not the
client's) and returns, per node whose lowering takes an inv_sqrt, the power of 4 ``s`` to scale the
argument by (the activations are scaled by sqrt(s)). The owner sends these numbers to the client at
setup; they reveal one coarse statistic (the order of magnitude of each norm's input variance) of the
model, nothing of the client's input.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from aero_compile.ops import OpKind, classify_node, target_name

INV_SQRT_SWEET_SPOT = 3.0


def _variance_plus_eps(kind: OpKind, args, kwargs) -> torch.Tensor:
    x = args[0].float()
    shape = args[1]
    dims = list(range(-(len(shape) if isinstance(shape, (list, tuple)) else 1), 0))
    if kind is OpKind.LAYERNORM:
        eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
        return x.var(dim=dims, unbiased=False) + eps
    eps = args[3] if len(args) > 3 and args[3] is not None else kwargs.get("eps") or 1e-6
    return x.pow(2).mean(dim=dims) + eps


class _InvSqrtRecorder(fx.Interpreter):
    """A plaintext forward that records the argument of every inv_sqrt the lowering will take."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.arguments: dict[str, torch.Tensor] = {}

    def run_node(self, node: fx.Node):
        result = super().run_node(node)
        if node.op in ("call_function", "call_method"):
            kind = classify_node(self.module, node)
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            if kind in (OpKind.LAYERNORM, OpKind.RMSNORM):
                self.arguments[node.name] = _variance_plus_eps(kind, args, kwargs)
            elif target_name(node) in ("rsqrt", "sqrt"):
                self.arguments[node.name] = args[0].float()
        return result


def scale_for(argument: torch.Tensor) -> float:
    """The power of 4 that brings the geometric mean of a positive argument next to the sweet spot."""
    positive = argument[argument > 0]
    if positive.numel() == 0:
        return 1.0
    geometric_mean = positive.double().log().mean().exp().item()
    return 4.0 ** round(math.log(INV_SQRT_SWEET_SPOT / geometric_mean, 4))


def owner_calibration_ids(vocab: int, batch: int, seq_len: int) -> torch.Tensor:
    """The tokens the owner computes scales on: its own choice (a fixed seed), never the client's."""
    return torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(1234))


def inv_sqrt_scales(gm: fx.GraphModule, input_ids: torch.Tensor) -> dict[str, float]:
    """{node name: s} for every norm / rsqrt / sqrt node, from a plaintext run on ``input_ids``."""
    recorder = _InvSqrtRecorder(gm)
    with torch.no_grad():
        recorder.run(input_ids)
    return {name: scale_for(argument) for name, argument in recorder.arguments.items()}
