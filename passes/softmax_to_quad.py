"""softmax-to-quad: MPCFormer's "2Quad" attention, (s + c)^2 on visible keys, normalized.

Before: ``a = softmax(s, -1)``
After: ``w = ((s + c) * visible)^2 / c^2``; ``a = w / (sum_j w_ij + eps)`` (``norm=sum``, the default:
one secret square per score, one reciprocal per row) or ``a = w * (1 / n_i)`` (``norm=length``: no
reciprocal at all). ``visible`` is the public causal 0/1 mask: the square of a masked score is large,
not 0 (inf for a float32 ``finfo.min`` mask), so the shifted scores are masked again before squaring. Dividing by ``c^2`` (public) makes w = 1 at s = 0, keeping the row
mean near 1 where CrypTen's reciprocal is accurate. Option ``c`` (default 5, as MPCFormer).
Changes the architecture.
"""

import torch

from aero_compile.blocks import attention_softmaxes
from aero_compile.errors import AeroError
from aero_compile.pass_registry import PassResult, Phase, register_pass
from aero_compile.pass_options import Option

from ._attention import AttentionBuilder, check_choice

NORMS = ("sum", "length")
SUM_EPS = 1e-2
MAX_SHIFT = 1000.0  # (s + c)^2 with |c| beyond this leaves the fixed-point range of the MPC engines
aten = torch.ops.aten


@register_pass("softmax-to-quad", preserves_computation=False, phase=Phase.ATTENTION,
               options={"c": Option(float, nonzero=True, min=-MAX_SHIFT, max=MAX_SHIFT),
                        "norm": Option(str, choices=NORMS)},
               summary="attention softmax -> (s + c)^2 on visible keys / row sum (norm=sum) or / row length")
def softmax_to_quad(gm, c: float = 5.0, norm: str = "sum") -> PassResult:
    check_choice("softmax-to-quad", "norm", norm, NORMS)
    try:
        c = float(c)
    except (TypeError, ValueError):
        raise AeroError(f"softmax-to-quad: c must be a number, not '{c}'") from None
    if c == 0:
        raise AeroError("softmax-to-quad: c must be non-zero (weights are scaled by 1/c^2)")
    changed = 0
    for op in attention_softmaxes(gm):
        build = AttentionBuilder(gm, op, f"quad-{norm}")
        shifted = build.call(aten.add.Tensor, build.scores, c)
        # Mask before squaring: a masked score (Hugging Face's finfo.min) squares to inf, and inf * 0 is NaN.
        visible_only = build.call(aten.mul.Tensor, shifted, build.visible())
        squared = build.call(aten.pow.Tensor_Scalar, visible_only, 2)
        weights = build.call(aten.mul.Tensor, squared, 1.0 / (c * c))
        build.replace_softmax(build.normalize(weights, norm, SUM_EPS))
        changed += 1
    return PassResult(gm, changed, [f"{changed} attention softmax(es) -> (s + {c:g})^2, normalized by row {norm}"])
