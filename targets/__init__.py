"""Backends: write the rewritten graph for training/serving (.pt2), interchange (ONNX), MPC (CrypTen)."""

from __future__ import annotations

from pathlib import Path

from aero_compile.errors import AeroError

# Output suffix -> (module under aero_compile.targets, function name); imported on use.
EMITTERS: dict[str, tuple[str, str]] = {
    ".pt2": ("pt2", "save_pt2"),
}


def emit(gm, path: str | Path, **options) -> dict:
    """Write ``gm`` to ``path`` in the format its suffix names; returns what the backend verified."""
    import importlib

    suffix = Path(path).suffix
    if suffix not in EMITTERS:
        raise AeroError(f"don't know how to write '{path}': use one of the suffixes {', '.join(EMITTERS)}")
    module_name, function = EMITTERS[suffix]
    module = importlib.import_module(f"aero_compile.targets.{module_name}")
    return getattr(module, function)(gm, path, **options) or {}
