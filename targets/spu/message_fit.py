"""Fit the messages an SPU cheetah op sends: a refill-free count per call plus silent-OT refills per element.

Why not the mean of back-to-back runs (what ``messages_points`` held until 2026-12-07): a silent-OT refill
adds ~1,300 to ~2,200 messages to whichever run drains the pool, so a mean over 1 to 4 runs of one size is
0, 1 or 2 refills, not the rate, and a norm's messages depend on the reduced length (the max over a row
is a tree of comparisons: +20 messages per doubling), which the calibration sizes (lengths 64 and 128)
never varied. gpt2-tiny after ``--passes all`` at T=8 (length 8): each softmax sends 186 messages in a
two-process run, the mean-of-runs points priced it at 274.

So each form's recorded runs (the simulator's and the process timings', whose counts agree) are split:

* **refill-free**: per size, the fewest messages of its runs; a least-squares line over the sizes in the
  form's features (norms: ``calls``, ``log2_length``, ``elements``; elementwise: ``calls``, ``elements``;
  matrix products: per matrix and HE ciphertext; elementwise forms also as points in elements, which the
  analyzer prefers: their steps change at 16,384 elements). A size whose fewest still lies a refill above the line
  (every run of it paid one) is left out of the line.
* **refills**: every run's messages above its size's refill-free count, summed over all runs of the form
  and divided by the elements those runs processed: the expected refill messages per element (pooled
  over sizes, so that one refill more or less does not swing it).

The analyzer adds both (``cost/profiles.py``): messages = line + ``messages_refills.per_element`` x elements.
"""

from __future__ import annotations

import math

import numpy as np

REFILL_MESSAGES = 1000  # a run this far above its size's refill-free count paid a silent-OT refill
NORM_MESSAGES = ("calls", "log2_length", "elements")
ELEMENTWISE_MESSAGES = ("calls", "elements")
MATRIX_MESSAGES = ("matrix_products", "he_sent_ciphertexts", "he_response_ciphertexts")


def message_features(features: dict[str, float]) -> dict[str, float]:
    """``features`` with ``log2_length`` (a norm's comparisons grow with the log of its reduced length)."""
    return {**features, "log2_length": math.log2(max(float(features.get("length", 1.0)), 1.0))}


def _lstsq(rows: list[dict], targets: list[float], names: tuple[str, ...]) -> dict[str, float]:
    matrix = np.array([[row.get(n, 0.0) for n in names] for row in rows], dtype=float)
    weights = 1.0 / np.maximum(np.array(targets, dtype=float), 1.0)  # relative: small sizes count alike
    coefficients, *_ = np.linalg.lstsq(matrix * weights[:, None], np.array(targets) * weights, rcond=None)
    return {n: float(c) for n, c in zip(names, coefficients)}


def _predict(coefficients: dict[str, float], features: dict[str, float]) -> float:
    return sum(c * float(features.get(n, 0.0)) for n, c in coefficients.items())


def fit_messages(sizes: list[dict], names: tuple[str, ...]) -> dict:
    """The profile fields of one form's messages from its ``sizes``: dicts with ``features`` (the analyzer's,
    of one call) and ``runs`` (messages of every back-to-back run of that size, any source)."""
    usable = [s for s in sizes if s["runs"]]
    rows = [message_features(s["features"]) for s in usable]
    fewest = [float(min(s["runs"])) for s in usable]
    kept = list(range(len(usable)))
    for _ in range(3):  # drop sizes whose every run paid a refill, refit on the rest
        line = _lstsq([rows[i] for i in kept], [fewest[i] for i in kept], names)
        above = [i for i in kept if fewest[i] - _predict(line, rows[i]) > REFILL_MESSAGES]
        if not above or len(kept) - len(above) < len(names):
            break
        kept = [i for i in kept if i not in above]
    extra, elements, refills, runs = 0.0, 0.0, 0, 0
    residual = 0.0
    for index, (size, row) in enumerate(zip(usable, rows)):
        base = fewest[index] if index in kept else _predict(line, row)
        if index in kept:
            residual = max(residual, abs(_predict(line, row) - base) / base)
        for count in size["runs"]:
            runs += 1
            elements += float(row.get("elements", 0.0))
            if count - base > REFILL_MESSAGES:
                extra, refills = extra + count - base, refills + 1
    fitted = {"messages": {n: round(c, 4) for n, c in line.items()},
            "messages_fit": {"features": list(names), "max_relative_residual": round(residual, 4),
                             "sizes": len(usable), "sizes_in_line": len(kept),
                             "note": "refill-free: the fewest messages of each size's runs, a line over the sizes"},
            "messages_refills": {"per_element": round(extra / elements, 6) if elements else 0.0,
                                 "refills": refills, "runs": runs, "refill_messages": round(extra),
                                 "elements": round(elements)}}
    if names == ELEMENTWISE_MESSAGES:  # elementwise steps are not a line in elements (cached triples, then HE)
        by_elements: dict[float, list[float]] = {}
        for index, row in enumerate(rows):
            base = fewest[index] if index in kept else _predict(line, row)
            by_elements.setdefault(float(row.get("elements", 0.0)), []).append(base)
        fitted["messages_points"] = {"feature": "elements", "note": "refill-free, per size",
                                     "points": [[x, round(float(np.median(v)), 2)] for x, v in sorted(by_elements.items())]}
    return fitted
