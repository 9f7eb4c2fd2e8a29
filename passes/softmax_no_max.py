"""softmax-no-max: exp(s - b) / row sum, with a public per-head offset b instead of the secret row max.

Before: ``a = softmax(s, -1)``  (CrypTen: max, exp, sum, reciprocal; the max is 79 of its 116 rounds
at T=128 and most of its bytes)
After:  ``e = exp(s - b_h); a = e / sum_j e_ij`` with ``b_h`` a public buffer, one number per head.

Without the max, exp's input is no longer <= 0: it must stay where the engine's exp is accurate.
CrypTen's exp is (1 + x/256)^256, off by a factor exp(-x^2/512) (12% at x = -8, 3% at x = +4), and
16-bit fixed point loses a row whose largest term is below exp(-11), and the row sum is inverted by a
Newton reciprocal that is accurate between ~1e-2 and ~600. So ``b_h`` is the largest row max of head
h's scores on a calibration batch (the row sum then lies in [exp(max - b), T], as softmax's lies in
[1, T]), and the pass reports, per head, how many calibration rows had their max (the term that
dominates the row) within ``EXP_WINDOW`` of ``b_h``: below it, the row's terms fall where exp and the
reciprocal lose accuracy.

Options: ``bound`` a number (the same public offset for every head: no calibration), or ``calibrate``
(the default): ``calibrate=N`` sequences (default 4) of ``tokens=random|corpus`` (default random) at
``calib_len`` tokens (default 64, capped by the context). Changes the computation where a row's max
leaves the window (verified drift is reported).
"""

from __future__ import annotations

import torch

from aero_compile.blocks import attention_softmaxes
from aero_compile.calibration import SOURCES as CALIBRATION_SOURCES, attention_statistics, calibration_tokens
from aero_compile.errors import AeroError
from aero_compile.graph_info import graph_info
from aero_compile.ops import MASK_VALUE
from aero_compile.pass_registry import PassResult, Phase, register_pass
from aero_compile.pass_options import MAX_CALIBRATION_LENGTH, MAX_CALIBRATION_SEQUENCES, Option

from ._attention import AttentionBuilder
from ._rewrite import add_buffer

aten = torch.ops.aten
EXP_WINDOW = (-4.0, 1.0)  # row max - b where exp's dominant terms and the row sum's reciprocal stay accurate
DEFAULT_CALIBRATION = (4, 64)  # sequences, tokens
MAX_BOUND = 1000.0
WARN_COVERAGE = 0.9  # below this share of a head's calibration rows in the window, the notes warn


def _calibrated_offsets(gm, calibrate: int, tokens: str, calib_len: int | None):
    length = min(int(calib_len or DEFAULT_CALIBRATION[1]), graph_info(gm).max_seq_len or 10**9)
    ids = calibration_tokens(gm, calibrate, length, tokens)
    offsets, notes, coverage = [], [], []
    for site, scores, _ in attention_statistics(gm, ids):
        visible = scores > MASK_VALUE / 2
        row_max = scores.masked_fill(~visible, float("-inf")).amax(-1)  # [batch, heads, queries]
        per_head = row_max.transpose(0, 1).reshape(row_max.shape[1], -1)  # [heads, rows]
        bound = per_head.amax(-1)
        distance = per_head - bound[:, None]
        inside = ((distance >= EXP_WINDOW[0]) & (distance <= EXP_WINDOW[1])).float().mean(-1)
        offsets.append(bound)
        coverage.extend(inside.tolist())
        notes.append(f"layer {site.layer}: b = [{', '.join(f'{v:.2f}' for v in bound.tolist())}], "
                     f"rows with max - b in [{EXP_WINDOW[0]:g}, {EXP_WINDOW[1]:g}]: "
                     f"[{', '.join(f'{v:.0%}' for v in inside.tolist())}], "
                     f"max - b from {distance.min().item():.2f} to {distance.max().item():.2f}")
    notes.insert(0, f"offsets calibrated on {ids.shape[0]} {tokens} sequence(s) of {ids.shape[1]} tokens")
    worst = min(coverage)
    if worst < WARN_COVERAGE:
        # Exact in floating point, but under fixed-point MPC such rows lose their terms (exp below
        # 2^-16, a row sum the reciprocal cannot invert): the private run's argmax agreement drops.
        notes.append(f"warning: only {worst:.0%} of one head's calibration rows lie in the window; rows further "
                     "below b are inaccurate under CrypTen's fixed point (expect argmax disagreement)")
    return offsets, notes


@register_pass("softmax-no-max", preserves_computation=False, phase=Phase.ATTENTION,
               # bound offsets attention scores before exp; past +-MAX_BOUND, exp of a fixed-point score
               # underflows or overflows in every engine, so such a bound is a typo, not a choice.
               options={"bound": Option(float, min=-MAX_BOUND, max=MAX_BOUND),
                        "calibrate": Option(int, min=1, max=MAX_CALIBRATION_SEQUENCES),
                        "calib_len": Option(int, min=1, max=MAX_CALIBRATION_LENGTH),
                        "tokens": Option(str, choices=CALIBRATION_SOURCES, what="calibration source")},
               summary="attention softmax -> exp(s - b) / row sum with a public per-head offset b "
                       "(calibrated, or bound=NUMBER): no secret row max")
def softmax_no_max(gm, bound: float | None = None, calibrate: int | None = None, tokens: str = "random",
                   calib_len: int | None = None) -> PassResult:
    softmaxes = attention_softmaxes(gm)
    if not softmaxes:
        return PassResult(gm, 0, ["no attention softmax"])
    if bound is not None:
        try:
            fixed = float(bound)
        except (TypeError, ValueError):
            raise AeroError(f"softmax-no-max: bound must be a number, not '{bound}'") from None
        offsets = [None] * len(softmaxes)
        notes = [f"one public offset b = {fixed:g} for every head (not calibrated)"]
    else:
        offsets, notes = _calibrated_offsets(gm, calibrate or DEFAULT_CALIBRATION[0], tokens, calib_len)
    for index, (op, offset) in enumerate(zip(softmaxes, offsets)):
        build = AttentionBuilder(gm, op, "exp-no-max")
        if offset is None:
            shifted = build.call(aten.sub.Tensor, build.scores, fixed)
        else:
            name = add_buffer(gm, f"attn_offset_layer{op.layer if op.layer is not None else index}",
                              offset.reshape(1, -1, 1, 1))
            shifted = build.call(aten.sub.Tensor, build.scores, build.get_attr(name))
        weights = build.call(aten.exp.default, shifted)
        # The row sum as softmax takes it (not the row mean): with b near the row max it lies in [~1, T].
        row_sum = build.call(aten.sum.dim_IntList, weights, [-1], True)
        inverse = build.call(aten.reciprocal.default, row_sum)
        build.replace_softmax(build.call(aten.mul.Tensor, weights, inverse))
    return PassResult(gm, len(softmaxes), notes)
