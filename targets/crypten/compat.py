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


# torch.distributed calls that block until the peers answer; isend/irecv block in their Work's wait().
_BLOCKING = frozenset({"init_process_group", "new_group", "all_reduce", "broadcast", "barrier", "reduce", "gather",
                       "all_gather", "scatter", "send", "recv"})
_ASYNC = frozenset({"isend", "irecv"})


class _WaitingWork:
    """An isend/irecv handle whose wait() counts as waiting for the peers."""

    def __init__(self, work):
        self._work = work

    def __getattr__(self, name):
        return getattr(self._work, name)

    def wait(self, *args, **kwargs):
        from aero_compile.targets.private.party_watch import CLOCK

        with CLOCK.waiting():
            return self._work.wait(*args, **kwargs)


class _WatchedDistributed:
    """torch.distributed as CrypTen's communicator sees it: a timeout on every group, and every blocking
    call marked as waiting for the peers (``private.party_watch.CLOCK``), so that a watcher can tell a party
    that waits from one that works."""

    def __init__(self, dist, timeout_s: float):
        self._dist, self._timeout = dist, timeout_s

    def __getattr__(self, name):
        attribute = getattr(self._dist, name)
        if name in _BLOCKING:
            return self._blocking(attribute, name in ("init_process_group", "new_group"))
        if name in _ASYNC:
            return lambda *args, **kwargs: _WaitingWork(attribute(*args, **kwargs))
        return attribute

    def _blocking(self, call, takes_timeout: bool):
        import datetime

        from aero_compile.targets.private.party_watch import CLOCK

        def blocking(*args, **kwargs):
            if takes_timeout:  # CrypTen passes none: gloo's 30-minute default would apply to every group
                kwargs.setdefault("timeout", datetime.timedelta(seconds=self._timeout))
            with CLOCK.waiting():
                return call(*args, **kwargs)

        return blocking


def set_party_timeout(crypten, timeout_s: float) -> None:
    """Give every CrypTen process group ``timeout_s`` (instead of gloo's 30 minutes) and mark its blocking
    calls as waiting (``private.party_watch``).

    The watchers of ``private.party_watch`` bound the waiting itself (a peer that works is waited for, however
    long); ``timeout_s`` here is the backstop gloo applies to the rendezvous and to every send/recv. It
    is scoped to CrypTen's module reference; the rest of torch.distributed is untouched.
    """
    import torch.distributed as dist
    from crypten.communicator import distributed_communicator
    from crypten.mpc.provider import ttp_provider

    distributed_communicator.dist = _WatchedDistributed(dist, timeout_s)
    ttp_provider.dist = distributed_communicator.dist  # the dealer's seed exchange and barrier at setup


# What the dealer may be asked to compute (CrypTen's TTPServer methods, the two of weight_masks and the two of
# cache_masks); the dealer calls ``getattr(self, function)``, so any other name from a peer would reach
# arbitrary methods.
_DEALER_FUNCTIONS = frozenset({"additive", "square", "binary", "wraps", "B2A", "aero_weight_mask",
                               "aero_masked_triple", "aero_cache_rows", "aero_cache_triple"})
_DEALER_PRODUCTS = frozenset({"mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"})
# The objects parties exchange are small (a request, a size, a table of scales): 64 MiB refuses absurd
# announcements before any buffer is allocated.
MAX_OBJECT_BYTES = 1 << 26


def _peer_name(rank: int, world_size: int) -> str:
    role = {0: "model owner", 1: "client"}.get(rank, "trusted third party" if rank == world_size else None)
    return f"the {role} (rank {rank})" if role else f"rank {rank}"


def _check_dealer_request(message, peer: str):
    from aero_compile.targets.private.wire import WireError

    if message == "terminate":
        return message
    if (not isinstance(message, dict) or set(message) != {"function", "device", "args", "kwargs"}
            or message["function"] not in _DEALER_FUNCTIONS or message["device"] not in (None, "cpu")
            or not isinstance(message["args"], tuple) or not isinstance(message["kwargs"], dict)):
        raise WireError(f"{peer} sent the dealer something that is not one of its requests: refused")
    if message["function"] == "additive" and (len(message["args"]) < 3 or message["args"][2] not in _DEALER_PRODUCTS):
        raise WireError(f"{peer} asked the dealer for a triple of an unknown product: refused")
    return message


def _typed_object_methods():
    """send_obj / recv_obj / broadcast_obj over the typed wire (``wire_objects``) instead of pickle.

    Same transport as CrypTen's (a length tensor, then the bytes, over torch.distributed) and the same
    ``_logging`` wrapper, so its round and byte counters count exactly what they counted before (they
    count the Python object, not its encoding).
    """
    import torch
    from crypten.communicator import distributed_communicator as module
    from crypten.communicator.communicator import _logging

    from aero_compile.targets.private.wire import WireError

    from .wire_objects import decode_object, encode_object

    def as_tensor(obj):
        payload = encode_object(obj)
        return torch.tensor(len(payload), dtype=torch.int64), torch.frombuffer(bytearray(payload), dtype=torch.uint8)

    def checked_length(length, peer: str) -> int:
        length = int(length)
        if not 0 < length <= MAX_OBJECT_BYTES:
            raise WireError(f"{peer} announced an object of {length:,} bytes, outside 1..{MAX_OBJECT_BYTES:,}: refused")
        return length

    def received(self, data, src: int):
        peer = _peer_name(src, self.world_size)
        obj = decode_object(data.numpy(), peer=peer, max_bytes=MAX_OBJECT_BYTES)
        # the dealer (rank world_size) only ever receives requests from rank 0
        return _check_dealer_request(obj, peer) if self.rank == self.world_size else obj

    def send_obj(self, obj, dst, group=None):
        size, data = as_tensor(obj)
        group = self.main_group if group is None else group
        works = [module.dist.isend(size, dst=dst, group=group), module.dist.isend(data, dst=dst, group=group)]
        for work in works:
            work.wait()

    def recv_obj(self, src, group=None):
        group = self.main_group if group is None else group
        size = torch.zeros((), dtype=torch.int64)
        module.dist.irecv(size, src=src, group=group).wait()
        data = torch.empty(checked_length(size, _peer_name(src, self.world_size)), dtype=torch.uint8)
        module.dist.irecv(data, src=src, group=group).wait()
        return received(self, data, src)

    def broadcast_obj(self, obj, src, group=None):
        group = self.main_group if group is None else group
        if self.rank == src:
            if obj is None:
                raise ValueError("the source party must provide an object to broadcast")
            size, data = as_tensor(obj)
            module.dist.broadcast(size, src, group=group)
            module.dist.broadcast(data, src, group=group)
            return obj
        size = torch.zeros((), dtype=torch.int64)
        module.dist.broadcast(size, src, group=group)
        data = torch.empty(checked_length(size, _peer_name(src, self.world_size)), dtype=torch.uint8)
        module.dist.broadcast(data, src, group=group)
        return received(self, data, src)

    return {"send_obj": _logging(send_obj), "recv_obj": _logging(recv_obj), "broadcast_obj": _logging(broadcast_obj)}


def _no_pickles_from_peers(crypten) -> None:
    # CrypTen's *_obj methods unpickle what a peer sends (a restricted unpickler, still pickle): any
    # peer, or anyone who reaches its port, would run code here. Replace them with typed messages.
    from crypten.communicator.distributed_communicator import DistributedCommunicator

    if getattr(DistributedCommunicator.send_obj, "_aero_typed", False):
        return
    for name, method in _typed_object_methods().items():
        method._aero_typed = True
        setattr(DistributedCommunicator, name, method)


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
    _no_pickles_from_peers(crypten)
    return crypten
