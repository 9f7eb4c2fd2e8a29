"""softmax-to-relu: attention weights relu(s), normalized by the row length or by the row sum.

Before: ``a = softmax(s, -1)``
After (``norm=length``, the default): ``a = relu(s) * (1 / n_i)``, with ``n_i`` the number of keys
query i sees (public: the causal row length), so the only secret nonlinearity left is the ReLU.
After (``norm=sum``): ``a = relu(s) / (sum_j relu(s_ij) + eps)``, one reciprocal per row more (taken
of the row mean, see ``_attention.AttentionBuilder.normalize``).
Masked scores (-1e4) give relu = 0, so the causal mask carries over unchanged. Under CrypTen a ReLU
is 9 rounds against softmax's 116 at T=128. Changes the architecture (the model needs training).
"""

import torch

from aero_compile.blocks import attention_softmaxes
from aero_compile.pass_registry import PassResult, Phase, register_pass
from aero_compile.pass_options import Option

from ._attention import AttentionBuilder, check_choice

NORMS = ("length", "sum")
SUM_EPS = 1e-2  # floor of the row mean: an all-zero ReLU row stays 0 instead of 0/0


@register_pass("softmax-to-relu", preserves_computation=False, phase=Phase.ATTENTION, options={"norm": Option(str, choices=NORMS)},
               summary="attention softmax -> relu(s) / row length (norm=length) or / row sum (norm=sum)")
def softmax_to_relu(gm, norm: str = "length") -> PassResult:
    check_choice("softmax-to-relu", "norm", norm, NORMS)
    changed = 0
    for op in attention_softmaxes(gm):
        build = AttentionBuilder(gm, op, f"relu-{norm}")
        weights = build.call(torch.ops.aten.relu.default, build.scores)
        build.replace_softmax(build.normalize(weights, norm, SUM_EPS))
        changed += 1
    return PassResult(gm, changed, [f"{changed} attention softmax(es) -> relu, normalized by row {norm}"])
