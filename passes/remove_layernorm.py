"""remove-layernorm: every LayerNorm and RMSNorm (final norm included) becomes identity.

Before: ``h = layer_norm(x, [d], w, b); y = linear(h, ...)``   After: ``y = linear(x, ...)``.
Changes the architecture (the model needs training); the pass manager records the logits drift.
Python-written norms (Llama's RMSNorm: pow/mean/rsqrt/mul) are removed as one region.
"""

from aero_compile.ops import NORMS, classify_graph
from aero_compile.pass_manager import PassResult, Phase, register_pass

from ._rewrite import Bypasser


@register_pass("remove-layernorm", preserves_computation=False, phase=Phase.REWRITE,
               summary="every LayerNorm and RMSNorm becomes identity (AERO: LN-free)")
def remove_layernorm(gm) -> PassResult:
    changed, skipped = 0, []
    bypass = Bypasser()
    for op in classify_graph(gm):
        if op.kind in NORMS:
            if bypass(op):
                changed += 1
            else:
                skipped.append(op.name)
    notes = [f"left {len(skipped)} norm(s) with several inputs/outputs: {skipped}"] if skipped else []
    return PassResult(gm, changed, notes)
