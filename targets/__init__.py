"""Backends: write the rewritten graph for training/serving (.pt2), interchange (ONNX), MPC (CrypTen)."""

from __future__ import annotations

from pathlib import Path

from aero_compile.errors import AeroError

# Output suffix -> (module under aero_compile.targets, function name); imported on use.
EMITTERS: dict[str, tuple[str, str]] = {
    ".pt2": ("pt2", "save_pt2"),
    ".onnx": ("onnx", "save_onnx"),
}


def calibrate_command(argv: list[str]) -> int:
    """``aero-compile calibrate ENGINE [options]``: the engine measures its own lowerings and writes its
    cost profile (the analyzer only reads it). Engines register their calibrator in
    ``targets.private.engines.ENGINES``."""
    from .private.engines import ENGINES

    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: aero-compile calibrate {{{','.join(ENGINES)}}} [options]\n\n"
              "Measure each op under an MPC engine and write its cost profile (ENGINE --help for options; "
              "the bumblebee profile is fitted: python -m aero_compile.tools.fit_bumblebee).")
        return 0 if argv else 2
    if argv[0] not in ENGINES:
        raise AeroError(f"cannot calibrate '{argv[0]}': engines are {', '.join(ENGINES)} "
                        "(bumblebee is fitted: python -m aero_compile.tools.fit_bumblebee)")
    return int(ENGINES[argv[0]].calibrate()(argv[1:]) or 0)


def output_suffix(path: str | Path, format: str | None = None) -> str:
    """The EMITTERS key for writing ``path``, as ``format`` (e.g. "onnx") or else its suffix names it."""
    suffix = Path(path).suffix
    if format is not None:
        if f".{format}" not in EMITTERS:
            raise AeroError(f"unknown output format '{format}': use one of {', '.join(s[1:] for s in EMITTERS)}")
        if suffix != f".{format}":
            raise AeroError(f"--emit {format} writes a .{format} file, but the output is '{path}'")
        return suffix
    if suffix not in EMITTERS:
        raise AeroError(f"don't know how to write '{path}': use one of the suffixes {', '.join(EMITTERS)}")
    return suffix


def emit(gm, path: str | Path, format: str | None = None, **options) -> dict:
    """Write ``gm`` to ``path`` in the format its suffix (or ``format``) names; returns what the backend verified."""
    import importlib

    module_name, function = EMITTERS[output_suffix(path, format)]
    module = importlib.import_module(f"aero_compile.targets.{module_name}")
    return getattr(module, function)(gm, path, **options) or {}
