"""Check a written ONNX file: ``onnx.checker``, then onnxruntime against the PyTorch graph at several shapes.

The comparison is on the logits. ``max_abs`` is the largest elementwise |onnx - torch|; ``max_rel`` is
that divided by the largest |torch logit| (elementwise relative error is meaningless near zero). A
shape passes when ``max_abs <= atol + rtol * max|torch logit|``, the rule the pass manager uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.fx as fx

from aero_compile.capturing import example_input, run_graph
from aero_compile.errors import AeroError, describe, first_line
from aero_compile.graph_info import graph_info

from .export import INPUT_NAME, OUTPUT_NAME

# Neither shape is the export example [2, 8], so a dim that export fixed cannot pass by accident.
CHECK_SHAPES = ((1, 7), (3, 13))
ATOL, RTOL = 1e-5, 1e-4


def check_file(path: Path) -> None:
    """Run ``onnx.checker`` (with shape inference) on the file; external data is read from beside it."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise AeroError(f"the exported ONNX model fails onnx.checker: {describe(exc)}") from None


def compare_with_torch(gm: fx.GraphModule, path: Path, shapes=CHECK_SHAPES, *, atol: float = ATOL,
                       rtol: float = RTOL, feeds=None) -> list[dict]:
    """Run the file in onnxruntime and ``gm`` in PyTorch on the same ids; a mismatch raises AeroError.

    ``feeds(input_ids)`` makes the file's inputs (default: ``{"input_ids": ids}``).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # fatal only: our error is the one line (ORT also logs warnings and errors)
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise AeroError(f"onnxruntime cannot load the exported file: {_ort_message(exc)}") from None
    max_len = graph_info(gm).max_seq_len or 0
    feeds = feeds or (lambda ids: {INPUT_NAME: ids.numpy()})
    results = []
    for batch, seq_len in shapes:
        seq_len = min(seq_len, max_len) if max_len else seq_len
        ids = example_input(gm, seq_len=seq_len, batch=batch, seed=1)
        expected = run_graph(gm, ids).float().numpy()
        try:
            got = session.run([OUTPUT_NAME], feeds(ids))[0].astype(np.float32)
        except Exception as exc:
            raise AeroError(f"onnxruntime cannot run the exported file at input_ids [{batch}, {seq_len}]: "
                            f"{_ort_message(exc)}") from None
        entry = {"shape": [batch, seq_len], **logit_errors(expected, got)}
        results.append(entry)
        tolerance = atol + rtol * entry["max_logit"]
        if not entry["max_abs"] <= tolerance:  # written so that NaN fails
            detail = entry.get("note") or (f"max |diff| {entry['max_abs']:.3g} (relative {entry['max_rel']:.3g}) "
                                           f"exceeds {tolerance:.3g}")
            raise AeroError(f"onnxruntime disagrees with PyTorch at input_ids {entry['shape']}: {detail}")
    return results


def _ort_message(exc: BaseException) -> str:
    """onnxruntime's message without its status-code preamble: the node and what went wrong."""
    text = first_line(exc, limit=400)
    return text.split("Non-zero status code returned while ", 1)[-1].replace("[ONNXRuntimeError] : ", "")


def logit_errors(expected: np.ndarray, got: np.ndarray) -> dict:
    """max_abs, max_rel and max_logit of ``got`` against ``expected`` (a note when shapes or non-finite values differ)."""
    if got.shape != expected.shape:
        return {"max_abs": float("inf"), "max_rel": float("inf"), "max_logit": 0.0,
                "note": f"logits shape {list(got.shape)} instead of {list(expected.shape)}"}
    finite = np.isfinite(expected)
    if (np.isfinite(got) != finite).any() or (got[~finite] != expected[~finite]).any():
        return {"max_abs": float("nan"), "max_rel": float("nan"), "max_logit": 0.0, "note": "non-finite values differ"}
    if not finite.any():
        return {"max_abs": 0.0, "max_rel": 0.0, "max_logit": 0.0}
    max_abs = float(np.abs(got[finite] - expected[finite]).max())
    max_logit = float(np.abs(expected[finite]).max())
    return {"max_abs": max_abs, "max_rel": max_abs / max_logit if max_logit else max_abs, "max_logit": max_logit}
