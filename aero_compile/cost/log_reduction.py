"""The shape of CrypTen's log-reduction max at any reduced length: what its rounds and bytes follow.

A profile entry priced this way (softmax, log_softmax, max under ``max_method = log_reduction``) carries
``"log_reduction": {"rounds": {...}, "bytes": {...}}``, linear forms in the features below, fitted by
``aero-compile calibrate crypten`` on lengths that are and are not powers of two.

Why a shape and not a table per length: CrypTen 0.4.1 (``common/functions/maximum.py``) halves the
row ``int(ln L)`` times (natural log: each halving keeps ``ceil(m / 2)``, one comparison and one
``where`` on ``floor(m / 2)`` pairs), then compares the ``m`` survivors pairwise (``(m - 1) * m``
comparisons) and multiplies the ``m - 1`` comparison rows together in a halving tree
(``ceil(log2(m - 1))`` levels). So the rounds step at ``L = e^k`` and wherever the survivors cross a
power of two, not at powers of two: interpolating a table measured at 2, 4, 8, ... missed a decode
step's softmax at short contexts by up to 7 rounds (priced 87-89, CrypTen took 84 at L = 5, 6).

Features (per call; byte features are per row times the rows):

* ``calls`` (1), ``halvings`` (``int(ln L)``), ``product_levels`` (levels of the survivors' product tree):
  the rounds;
* ``elements`` (L x rows: exp, the one-hot of the max, the normalization, and the halving, whose pairs
  number L - m), ``rows`` (the reciprocal, the tie-breaking sample), ``survivors`` (m x rows: their
  one-hot, its product with them, and the halving's - m), ``pairwise`` ((m - 1) m x rows: the pairwise
  comparisons and the product tree, which multiplies m - 2 rows of m, (m - 1) m - m elements): the bytes.
  These four span every byte CrypTen counts (the fit is exact at every length measured).
"""

from __future__ import annotations

import math

ROUND_FEATURES = ("calls", "halvings", "product_levels")
BYTE_FEATURES = ("elements", "rows", "survivors", "pairwise")


def shape(length: int) -> dict[str, int]:
    """CrypTen's log-reduction of one row of ``length``: its halvings, survivors and product-tree levels."""
    length = max(int(length), 1)
    halvings = int(math.log(length)) if length > 1 else 0
    size = length
    for _ in range(halvings):
        size = size // 2 + size % 2
    survivors = size if size > 1 else 2  # the pairwise stage treats a row of one as two
    factors, levels = survivors - 1, 0  # m - 1 comparison rows, multiplied together by halving
    while factors > 1:
        factors = factors // 2 + factors % 2
        levels += 1
    return {"halvings": halvings, "survivors": survivors, "product_levels": levels}


def features(length: int, rows: float) -> dict[str, float]:
    """The linear-form features of one call on ``rows`` rows of ``length`` (see the module docstring)."""
    s = shape(length)
    m = float(s["survivors"])
    return {"calls": 1.0, "halvings": float(s["halvings"]), "product_levels": float(s["product_levels"]),
            "elements": float(length) * rows, "rows": float(rows), "survivors": m * rows,
            "pairwise": (m - 1) * m * rows}
