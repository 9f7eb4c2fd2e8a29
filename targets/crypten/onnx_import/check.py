"""Check a CrypTen ONNX file with CrypTen itself: ``crypten.nn.from_onnx``, run in plaintext against onnxruntime.

What this proves: CrypTen's own converter reads every node, and its modules compute the logits. The
encrypted two-party run is the test's (tests/test_onnx_consumers.py, with ``consumer.py``); it needs
processes. Skipped (and said so) when CrypTen is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aero_compile.capturing import example_input
from aero_compile.errors import AeroError, describe
from aero_compile.targets.onnx.export import OUTPUT_NAME, OnnxExport
from aero_compile.targets.onnx.verify import ATOL, RTOL, logit_errors


def crypten_import(exported: OnnxExport, path: Path, shape) -> dict:
    """CrypTen's from_onnx on the file at ``shape`` [batch, sequence], against onnxruntime; the report entry."""
    import importlib.util

    import onnxruntime

    if importlib.util.find_spec("crypten") is None:
        return {"status": "skipped: CrypTen is not installed"}
    ids = example_input(exported.graph_module, seq_len=shape[1], batch=shape[0], seed=2)
    feeds = exported.feeds(ids)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run([OUTPUT_NAME], feeds)[0].astype(np.float32)
    return {"status": "imported and run in plaintext", **compare_in_crypten(path, feeds, expected)}


def compare_in_crypten(path: Path, feeds: dict, expected: np.ndarray, *, atol: float = ATOL,
                       rtol: float = RTOL) -> dict:
    """Import the file with ``crypten.nn.from_onnx`` and run it in plaintext (no parties) on ``feeds``."""
    import torch

    from ..compat import import_crypten

    crypten = import_crypten()
    try:
        with open(path, "rb") as handle:
            model = crypten.nn.from_onnx(handle)
        with torch.no_grad():
            got = model(*[torch.from_numpy(value) for value in feeds.values()])
    except Exception as exc:
        raise AeroError(f"CrypTen's from_onnx cannot run the exported file: {describe(exc)}") from None
    entry = logit_errors(expected, np.asarray(got, dtype=np.float32))
    if not entry["max_abs"] <= atol + rtol * entry["max_logit"]:
        detail = entry.get("note") or f"max |diff| {entry['max_abs']:.3g}"
        raise AeroError(f"CrypTen (plaintext) disagrees with onnxruntime: {detail}")
    return entry
