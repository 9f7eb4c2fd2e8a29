"""What both engines' calibrations share: shapes of a form's graph, least-squares fits, compute timings.

    from aero_compile.targets.private.calibration import fit_linear, fit_seconds, form_shapes, median_seconds

``aero-compile calibrate crypten|spu`` build each op form (``targets/crypten/calibration_forms.py``) at
several sizes, run it under their engine and fit the profile entry that prices it. Bytes and rounds stay
each engine's own (their protocols differ); the fit itself, the timing statistic and the provenance of a
compute figure are written once, here.
"""

from __future__ import annotations

import datetime
import os
import statistics

import numpy as np
import torch
import torch.fx as fx

from aero_compile.cost.machine import cpu_model, usable_cores
from aero_compile.shapes import TensorMeta


def form_shapes(gm: fx.GraphModule, inputs: list[torch.Tensor]) -> dict[fx.Node, TensorMeta]:
    """Shapes of every node of a form's graph, run on its example inputs (the analyzer's view of them)."""
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(gm).propagate(*inputs)
    return {node: TensorMeta(tuple(node.meta["tensor_meta"].shape), node.meta["tensor_meta"].dtype)
            for node in gm.graph.nodes if hasattr(node.meta.get("tensor_meta"), "shape")}


def fit_linear(rows: list[dict[str, float]], target: list[float], features: tuple[str, ...]) -> tuple[dict, float]:
    """Non-negative coefficients of ``target ~ sum(c_f * row[f])`` by least squares on relative errors
    (small and large sizes count alike); (coefficients, largest relative residual).

    A negative coefficient (a cost is never negative) is dropped and the rest refitted.
    """
    matrix = np.array([[row.get(f, 0.0) for f in features] for row in rows], dtype=float)
    goal = np.array(target, dtype=float)
    weights = 1.0 / np.maximum(goal, 1e-12)
    active = list(range(len(features)))
    coefficients = np.zeros(len(features))
    while active:
        solution, *_ = np.linalg.lstsq(matrix[:, active] * weights[:, None], goal * weights, rcond=None)
        if (solution >= 0).all():
            coefficients[active] = solution
            break
        active = [i for i, c in zip(active, solution) if c >= 0] or []
    residual = float(np.max(np.abs(matrix @ coefficients - goal) * weights)) if len(goal) else 0.0
    return {f: float(c) for f, c in zip(features, coefficients) if c > 0}, residual


def median_seconds(timings: list[float]) -> float:
    """The statistic a compute figure is taken with: the median of repetitions (robust to a busy moment)."""
    return float(statistics.median(timings))


def fit_seconds(results: list[dict], features: tuple[str, ...]) -> dict:
    """A profile entry's compute term from timed results (each ``{"steps": [{"features"}], "seconds"}``):
    ``{"seconds": {feature: s per unit}, "seconds_fit": {...}}``."""
    rows = [r["steps"][0]["features"] for r in results]
    coefficients, residual = fit_linear(rows, [r["seconds"] for r in results], features)
    return {"seconds": {f: float(f"{c:.6g}") for f, c in coefficients.items()},
            "seconds_fit": {"features": list(features), "max_relative_residual": round(residual, 4),
                            "points": len(results)}}


def machine() -> dict:
    """Where a compute figure was measured: CPU model, cores this process may use, date, load at the start."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu_model(), "cores": usable_cores(),
            "torch_threads": torch.get_num_threads(), "load_average_1min": round(load, 2) if load is not None else None,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")}
