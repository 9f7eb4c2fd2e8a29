"""Every fix CrypTen 0.4.1 (2022) needs on current torch, in one place. Import crypten through here.

    from aero_compile.targets.crypten.compat import import_crypten
    crypten = import_crypten()
"""

from __future__ import annotations

import importlib
import sys


def _alias_onnx_registration() -> None:
    # crypten/__init__ imports torch.onnx._internal.registration (via its ONNX converter); torch 2.9+
    # moved it under torch.onnx._internal.torchscript_exporter. Alias the old name before the import.
    old = "torch.onnx._internal.registration"
    if old in sys.modules:
        return
    try:
        importlib.import_module(old)
    except ModuleNotFoundError:
        sys.modules[old] = importlib.import_module("torch.onnx._internal.torchscript_exporter.registration")


def import_crypten():
    """``import crypten`` with the compatibility fixes applied; raises AeroError if it is not installed."""
    from aero_compile.errors import AeroError

    _alias_onnx_registration()
    try:
        import crypten
    except ImportError as exc:
        raise AeroError(f"CrypTen is not importable ({exc}): install it with "
                        "`pip install --no-deps crypten==0.4.1 numpy pyyaml omegaconf onnx` (see install.sh)") from None
    return crypten
