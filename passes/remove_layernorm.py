"""remove-layernorm: every LayerNorm and RMSNorm (final norm included) becomes identity.

Before: ``h = layer_norm(x, [d], w, b); y = linear(h, ...)``   After: ``y = linear(x, ...)``.
Changes the architecture (the model needs training); the pass manager records the logits drift.
Python-written norms (Llama's RMSNorm: pow/mean/rsqrt/mul) are removed as one region.

Option ``replace=weight-norm|spectral-norm`` (AERO's follow-up: normalization that costs nothing at
inference): the graph is exactly that of plain remove-layernorm; the stream each removed norm read is
tagged (``REPLACEMENT_KEY``) so that ``aero-compile train`` reparametrizes the linear layers reading it
(weight normalization, or spectral normalization by a power iteration) and folds the reparametrization
back into plain weights on export (``aero_compile.training.reparametrize``). Outside training the tag
changes nothing: op counts and cost are those of remove-layernorm.
"""

from aero_compile.ops import NORMS, classify_graph
from aero_compile.pass_registry import PassResult, Phase, register_pass
from aero_compile.pass_options import Option

from ._rewrite import Bypasser

REPLACEMENTS = ("none", "weight-norm", "spectral-norm")
REPLACEMENT_KEY = "aero_norm_replacement"  # node.meta tag: linears reading this node get the reparametrization


@register_pass("remove-layernorm", preserves_computation=False, phase=Phase.REWRITE,
               options={"replace": Option(str, choices=REPLACEMENTS)},
               summary="every LayerNorm and RMSNorm becomes identity (AERO: LN-free; replace=weight-norm|"
                       "spectral-norm: training reparametrizes the linears that read them, folded on export)")
def remove_layernorm(gm, replace: str = "none") -> PassResult:
    changed, skipped = 0, []
    bypass = Bypasser()
    for op in classify_graph(gm):
        if op.kind in NORMS:
            if bypass(op):
                changed += 1
            else:
                skipped.append(op.name)
    notes = [f"left {len(skipped)} norm(s) with several inputs/outputs: {skipped}"] if skipped else []
    if replace != "none":
        for source in set(bypass.replacements.values()):
            source.meta[REPLACEMENT_KEY] = replace
        notes.append(f"{len(set(bypass.replacements.values()))} stream(s) tagged for {replace} in training "
                     "(the graph is plain remove-layernorm's)")
    return PassResult(gm, changed, notes)
