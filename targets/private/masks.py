"""Attention-mask constants an engine's fixed point can compute with.

Graphs mask attention scores with a "minus infinity" (``ops.MASK_VALUE`` = -1e4, torch's finfo.min,
-inf). Under MPC the value is a fixed-point number that then goes through exp (after the row max is
subtracted): each engine picks a finite mask its exp handles and that still rounds to exactly 0
(CrypTen: -64, see ``targets/crypten/protocols.py``; SPU: see ``targets/spu/config.py``).
"""

from __future__ import annotations

import torch

from aero_compile.ops import MASK_VALUE


def replace_masks(value, mask_value: float):
    """``value`` with every entry <= MASK_VALUE (-1e4, -3.4e38, -inf) replaced by ``mask_value``."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            return torch.where(value <= MASK_VALUE, torch.full_like(value, mask_value), value)
        return value
    if isinstance(value, float) and value <= MASK_VALUE:
        return mask_value
    return value
