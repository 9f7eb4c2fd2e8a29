"""gelu-to-identity: every FFN GELU (exact, tanh, Python-written NewGELU) becomes identity.

Before: ``h = gelu(linear(x, W1)); y = linear(h, W2)``   After: ``y = linear(linear(x, W1), W2)``,
which fold-linear then merges into one layer. Options ``relu=true`` and ``silu=true`` do the same for
ReLU and SiLU (a SwiGLU gate ``down(silu(gate(x)) * up(x))`` becomes ``down(gate(x) * up(x))``).
Only activations inside FFN sub-blocks are touched (``blocks.ffn_activations``): a ReLU used as an
attention normalization, or any activation outside an FFN, survives and is named in the notes.
Changes the architecture.
"""

from aero_compile.blocks import ffn_activations, outside_ffn_note
from aero_compile.ops import OpKind
from aero_compile.pass_registry import PassResult, Phase, register_pass

from ._rewrite import Bypasser


@register_pass("gelu-to-identity", preserves_computation=False, phase=Phase.REWRITE,
               options={"relu": bool, "silu": bool},
               summary="every FFN GELU (and with relu=true/silu=true every FFN ReLU/SiLU) becomes identity")
def gelu_to_identity(gm, relu: bool = False, silu: bool = False) -> PassResult:
    kinds = {OpKind.GELU} | ({OpKind.RELU} if relu else set()) | ({OpKind.SILU} if silu else set())
    inside, outside = ffn_activations(gm, kinds)
    bypass = Bypasser()
    changed = sum(1 for op in inside if bypass(op))
    return PassResult(gm, changed, outside_ffn_note(outside))
