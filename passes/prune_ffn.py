"""prune-ffn: drop the FFN sub-blocks of the deepest N layers (AERO prunes the last 6 of 12).

Before: ``out = add(x_sa, ffn(x_sa))``   After: ``out = x_sa``. Option ``last`` (default: half the
layers). Changes the architecture.
"""

from aero_compile.blocks import ffn_blocks, missing_layers_note, residual_add
from aero_compile.pass_registry import PassResult, Phase, register_pass
from aero_compile.pass_options import Option


@register_pass("prune-ffn", preserves_computation=False, options={"last": Option(int, min=0, limit="layers")},
               phase=Phase.PRUNE, once="a second run would prune the next deepest layers too",
               summary="drop the FFN sub-blocks of the deepest N layers (option last=N, default half)")
def prune_ffn(gm, last: int | None = None) -> PassResult:
    blocks = ffn_blocks(gm)
    if not blocks:
        return PassResult(gm, 0, ["no FFN sub-blocks found"])
    layers = sorted({b.layer for b in blocks})
    count = len(layers) // 2 if last is None else int(last)
    pruned_layers = set(layers[len(layers) - count:]) if count > 0 else set()
    changed, notes = 0, missing_layers_note(gm, set(layers), "an FFN", "so 'last' counts only the layers found")
    for block in blocks:
        if block.layer not in pruned_layers:
            continue
        found = residual_add(gm, block.output)
        if found is None:
            notes.append(f"layer {block.layer}: no residual add after the FFN, not pruned")
            continue
        found.add.replace_all_uses_with(found.residual)
        changed += 1
    return PassResult(gm, changed, notes)
