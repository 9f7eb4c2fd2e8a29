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


def _fix_fixed_point_decode(crypten) -> None:
    # FixedPointEncoder.decode floor-divides negative values by (scale - 1) instead of scale, so some
    # negative values come back exactly 1.0 too low (-131071 / 2^16 decodes to -3.0, not -2.00002).
    # Revealed logits are negative more often than not; decode with an exact floor division by scale.
    from crypten.encoder import FixedPointEncoder

    if getattr(FixedPointEncoder.decode, "_aero_fixed", False):
        return
    original = FixedPointEncoder.decode

    def decode(self, tensor):
        if tensor is None or self._scale <= 1:
            return original(self, tensor)
        whole = tensor.div(self._scale, rounding_mode="floor")
        return (whole.float() + (tensor - whole * self._scale).float() / self._scale).data

    decode._aero_fixed = True
    FixedPointEncoder.decode = decode


def _fix_plaintext_cat(crypten) -> None:
    # crypten.cat of plain tensors calls torch.cat(tensors) and drops ``dim``: a crypten.nn model
    # imported from ONNX (a rotary Concat on the last axis) computes wrong shapes when run unencrypted.
    # CrypTensors take the other branch, which was always right.
    if getattr(crypten.cat, "_aero_fixed", False):
        return
    original = crypten.cat

    def cat(tensors, dim=0):
        import torch

        if all(torch.is_tensor(t) for t in tensors):
            return torch.cat(tensors, dim=dim)
        return original(tensors, dim=dim)

    cat._aero_fixed = True
    crypten.cat = cat


class _DistributedWithTimeout:
    """torch.distributed as CrypTen's communicator sees it, with a timeout on process-group setup."""

    def __init__(self, dist, timeout_s: float):
        self._dist, self._timeout = dist, timeout_s

    def __getattr__(self, name):
        return getattr(self._dist, name)

    def _with_timeout(self, kwargs):
        import datetime

        kwargs.setdefault("timeout", datetime.timedelta(seconds=self._timeout))
        return kwargs

    def init_process_group(self, *args, **kwargs):
        return self._dist.init_process_group(*args, **self._with_timeout(kwargs))

    def new_group(self, *args, **kwargs):
        # CrypTen sends on sub-groups; each takes gloo's 30-minute default unless given one.
        return self._dist.new_group(*args, **self._with_timeout(kwargs))


def set_party_timeout(crypten, timeout_s: float) -> None:
    """Make a party that never connects (or dies) fail after ``timeout_s`` instead of gloo's 30 minutes.

    CrypTen's DistributedCommunicator calls ``dist.init_process_group`` without a timeout, so gloo's
    default (30 min) applies to the rendezvous and to every later send/recv. The timeout is scoped to
    CrypTen's module reference; the rest of torch.distributed is untouched.
    """
    import torch.distributed as dist
    from crypten.communicator import distributed_communicator

    distributed_communicator.dist = _DistributedWithTimeout(dist, timeout_s)


def import_crypten():
    """``import crypten`` with the compatibility fixes applied; raises AeroError if it is not installed."""
    from aero_compile.errors import AeroError

    _alias_onnx_registration()
    try:
        import crypten
    except ImportError as exc:
        raise AeroError(f"CrypTen is not importable ({exc}): install it with "
                        "`pip install --no-deps crypten==0.4.1 numpy pyyaml omegaconf onnx` (see install.sh)") from None
    _fix_fixed_point_decode(crypten)
    _fix_plaintext_cat(crypten)
    return crypten
