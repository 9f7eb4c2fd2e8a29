"""scale-ffn: AERO's learnable FFN scaling, X_out = beta * X_sa + (1/alpha) * FFN(X_sa), per layer.

Before: ``out = add(x_sa, ffn)``   After: ``out = add(mul(x_sa, beta), mul(ffn, reciprocal(alpha)))``
with new scalar parameters ``alpha``, ``beta`` (initialized to 1, so the computation is unchanged until
training moves them). ``reciprocal(alpha)`` depends on a weight alone: the model owner computes it in
the clear, it costs nothing under MPC. In parallel-residual blocks (GPT-NeoX) the add that takes the
FFN output sums it with the attention branch, which then carries beta.
"""

import torch

from aero_compile.blocks import ffn_blocks, missing_layers_note, residual_add
from aero_compile.pass_registry import PassResult, Phase, register_pass

from ._rewrite import add_parameter, copy_meta

@register_pass("scale-ffn", preserves_computation=True, phase=Phase.SCALE,
               once="a second run would scale every FFN again (new alpha/beta, more products)",
               summary="learnable per-layer FFN scaling: beta*X_sa + (1/alpha)*FFN(X_sa) (identity at init)")
def scale_ffn(gm) -> PassResult:
    changed, notes = 0, []
    graph = gm.graph
    blocks = ffn_blocks(gm)
    notes += missing_layers_note(gm, {b.layer for b in blocks}, "an FFN", "left unscaled")
    for block in blocks:
        found = residual_add(gm, block.output)
        if found is None:
            notes.append(f"layer {block.layer}: no residual add after the FFN, left unscaled")
            continue
        add, ffn_side, other = found.add, found.ffn_side, found.residual
        stem = f"ffn_scale_layer{block.layer}"
        alpha_name = add_parameter(gm, f"{stem}_alpha", torch.ones(()))
        beta_name = add_parameter(gm, f"{stem}_beta", torch.ones(()))
        with graph.inserting_before(add):
            alpha = graph.get_attr(alpha_name)
            beta = graph.get_attr(beta_name)
            inv_alpha = graph.call_function(torch.ops.aten.reciprocal.default, (alpha,))
            scaled_ffn = graph.call_function(torch.ops.aten.mul.Tensor, (ffn_side, inv_alpha))
            scaled_rest = graph.call_function(torch.ops.aten.mul.Tensor, (other, beta))
        copy_meta(block.output, inv_alpha, scaled_ffn)
        copy_meta(add, scaled_rest)
        add.args = (scaled_rest, scaled_ffn) + tuple(add.args[2:])
        changed += 1
    return PassResult(gm, changed, notes)
