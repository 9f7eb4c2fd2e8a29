"""gelu-to-identity: every GELU (exact, tanh, Python-written NewGELU) becomes identity.

Before: ``h = gelu(linear(x, W1)); y = linear(h, W2)``   After: ``y = linear(linear(x, W1), W2)``,
which fold-linear then merges into one layer. Options ``relu=true`` and ``silu=true`` do the same for
ReLU and SiLU (a SwiGLU gate ``down(silu(gate(x)) * up(x))`` becomes ``down(gate(x) * up(x))``).
Changes the architecture.
"""

from aero_compile.ops import OpKind, classify_graph
from aero_compile.pass_manager import PassResult, register_pass

from ._rewrite import Bypasser


@register_pass("gelu-to-identity", preserves_computation=False, runs_after=("canonicalize",),
               options=("relu", "silu"),
               summary="every GELU (and with relu=true/silu=true every ReLU/SiLU) becomes identity")
def gelu_to_identity(gm, relu: bool = False, silu: bool = False) -> PassResult:
    kinds = {OpKind.GELU} | ({OpKind.RELU} if relu else set()) | ({OpKind.SILU} if silu else set())
    bypass = Bypasser()
    changed = sum(1 for op in classify_graph(gm) if op.kind in kinds and bypass(op))
    return PassResult(gm, changed)
