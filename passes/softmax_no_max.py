"""softmax-no-max: exp(s - mean(s) - b) / row sum, a public per-head offset b instead of the secret row max.

Before: ``a = softmax(s, -1)``  (CrypTen: max, exp, sum, reciprocal; the max is 79 of its 116 rounds
at T=128 and most of its bytes)
After:  ``e = exp(s - m_i - b_h) * visible; a = e / sum_j e_ij``, with ``m_i`` the mean of row i's visible
scores (a sum and a public scaling: free under MPC) and ``b_h`` a public buffer, one number per head.

Without the max, exp's input is no longer <= 0: it must stay where the engine's exp and reciprocal are
accurate (CrypTen: exp is (1 + x/256)^256, off by exp(-x^2/512); the Newton reciprocal is accurate for
inputs between ~1e-2 and ~600). Offsetting by the row *mean* bounds the reciprocal's input from below
for every input, not only calibrated ones: the row mean of exp(s - m) is >= exp(0) = 1 (Jensen), so the
row mean of e is >= exp(-b_h). From above it is <= exp(max - m - b_h): ``b_h`` is set from the largest
``max - m`` of head h on a calibration batch (plus ``MARGIN`` for inputs beyond it) so that this stays
below exp(``UPPER``), and b_h >= 0. The notes give each head's calibrated spread and the interval its
reciprocal then sees. A head whose spread is too wide for both ends (exp(-b_h) < ``RECIPROCAL_FLOOR``)
makes the pass refuse, pointing at softmax-to-quad: measured under CrypTen at T=128 (benchmarks/README.md),
a trained LayerNorm-free model with such heads agreed with its plaintext argmax at 91-96%, a trained
model whose heads all fit at 100% in 5 of 5 runs. The offsets hold for the weights calibrated on: after
training a graph that has the pass, apply it again to the trained model.
(An offset from the row max of calibration rows alone, the first form of this pass, left rows whose max
was far below it with every term under 16-bit fixed point's resolution: 62-81% argmax agreement and
NaN on trained LayerNorm-free models.)

Options: ``bound`` a number (the same public offset for every head: no calibration), or ``calibrate``
(the default): ``calibrate=N`` sequences (default 4) of ``tokens=random|corpus`` (default random) at
``calib_len`` tokens (default 64, capped by the context). Exact in plaintext (any offset cancels).
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
UPPER = 5.3  # log(200): the row mean of e stays below 200 on calibration (+ MARGIN), well inside ~600
MARGIN = 1.0  # room above the calibrated spread for inputs that spread further
RECIPROCAL_FLOOR = 1e-2  # below this the reciprocal loses accuracy: a head whose lower bound is under it is named
MASKED_EXPONENT = -16.0  # masked keys' exponent (then multiplied by 0): never a huge negative input to exp
DEFAULT_CALIBRATION = (4, 64)  # sequences, tokens
MAX_BOUND = 1000.0


def _calibrated_offsets(gm, calibrate: int, tokens: str, calib_len: int | None):
    length = min(int(calib_len or DEFAULT_CALIBRATION[1]), graph_info(gm).max_seq_len or 10**9)
    ids = calibration_tokens(gm, calibrate, length, tokens)
    offsets, notes, narrow = [], [], []
    for site, scores, _ in attention_statistics(gm, ids):
        visible = scores > MASK_VALUE / 2
        count = visible.sum(-1)
        row_max = scores.masked_fill(~visible, float("-inf")).amax(-1)  # [batch, heads, queries]
        row_mean = scores.masked_fill(~visible, 0.0).sum(-1) / count
        spread = (row_max - row_mean).transpose(0, 1).reshape(row_max.shape[1], -1).amax(-1)  # per head
        offset = (spread + MARGIN - UPPER).clamp_min(0.0)
        low, high = torch.exp(-offset), torch.exp(spread - offset)
        offsets.append(offset)
        narrow += [f"layer {site.layer} head {h}" for h in range(len(offset)) if low[h] < RECIPROCAL_FLOOR]
        notes.append(f"layer {site.layer}: spread max - mean = [{', '.join(f'{v:.2f}' for v in spread.tolist())}], "
                     f"b = [{', '.join(f'{v:.2f}' for v in offset.tolist())}], the reciprocal sees "
                     f"[{', '.join(f'{a:.2g}..{b:.3g}' for a, b in zip(low.tolist(), high.tolist()))}]")
    notes.insert(0, f"offsets calibrated on {ids.shape[0]} {tokens} sequence(s) of {ids.shape[1]} tokens")
    if narrow:
        # Measured (benchmarks/README.md, softmax-no-max): with such heads a trained LayerNorm-free model agreed
        # with its plaintext argmax at 91-96% under CrypTen (T=128); where every head fits, 100% in 5 of 5 runs.
        raise AeroError(f"softmax-no-max: {', '.join(narrow)} spread their scores (max - mean) too wide on calibration "
                        f"for one public offset to keep exp and the reciprocal accurate under MPC; use "
                        f"softmax-to-quad (no exp, no max) for this model")
    return offsets, notes


@register_pass("softmax-no-max", preserves_computation=False, phase=Phase.ATTENTION,
               # bound offsets attention scores before exp; past +-MAX_BOUND, exp of a fixed-point score
               # underflows or overflows in every engine, so such a bound is a typo, not a choice.
               options={"bound": Option(float, min=-MAX_BOUND, max=MAX_BOUND),
                        "calibrate": Option(int, min=1, max=MAX_CALIBRATION_SEQUENCES),
                        "calib_len": Option(int, min=1, max=MAX_CALIBRATION_LENGTH),
                        "tokens": Option(str, choices=CALIBRATION_SOURCES, what="calibration source")},
               summary="attention softmax -> exp(s - row mean - b) / row sum with a public per-head offset b "
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
        notes = [f"one public offset b = {fixed:g} above the row mean for every head (not calibrated)"]
    else:
        offsets, notes = _calibrated_offsets(gm, calibrate or DEFAULT_CALIBRATION[0], tokens, calib_len)
    for index, (op, offset) in enumerate(zip(softmaxes, offsets)):
        build = AttentionBuilder(gm, op, "exp-no-max")
        visible = build.visible()
        # the row mean of the visible scores: a sum and a public scaling (masked scores times 0)
        visible_scores = build.call(aten.mul.Tensor, build.scores, visible)
        row_mean = build.call(aten.mul.Tensor, build.call(aten.sum.dim_IntList, visible_scores, [-1], True),
                              build.inverse_length())
        centred = build.call(aten.sub.Tensor, build.scores, row_mean)
        if offset is None:
            shifted = build.call(aten.sub.Tensor, centred, fixed)
        else:
            name = add_buffer(gm, f"attn_offset_layer{op.layer if op.layer is not None else index}",
                              offset.reshape(1, -1, 1, 1))
            shifted = build.call(aten.sub.Tensor, centred, build.get_attr(name))
        # masked keys: exponent MASKED_EXPONENT instead of ~-1e4 (public 0/1 arithmetic), then weight 0
        masked_part = build.call(aten.mul.Tensor, build.call(aten.sub.Tensor, visible, 1.0), -MASKED_EXPONENT)
        bounded = build.call(aten.add.Tensor, build.call(aten.mul.Tensor, shifted, visible), masked_part)
        weights = build.call(aten.mul.Tensor, build.call(aten.exp.default, bounded), visible)
        build.replace_softmax(build.normalize(weights, "sum", 0.0))
    return PassResult(gm, len(softmaxes), notes)
