"""INTERIM (until ``targets/crypten/wire_objects.py`` lands): CrypTen's *_obj objects as typed wire messages.

The same two functions, with the same signatures, as the module the security work is writing; when it
lands, ``communicator.py`` imports them from there (one line) and this file goes. Never unpickles: a JSON tree of tagged containers
in the header (tuple, torch.Size, dict with string keys, non-finite floats), tensors and numpy arrays
as typed ``private.wire`` arrays after it. What CrypTen and our lowering send: the dealer's requests
(``{"function", "device", "args", "kwargs"}``) and ``"terminate"``, its answers (``torch.Size``),
share sizes (``torch.Size``), the owner's norm scales (``{name: float}``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from aero_compile.targets.private.wire import WireError, decode, encode

MAX_DEPTH = 16


def encode_object(obj) -> bytes:
    """One wire message holding ``obj``; WireError if it holds anything but plain data, tuples, sizes, tensors."""
    arrays: list[np.ndarray] = []
    return encode({"object": _tree(obj, arrays, 0)}, arrays)


def decode_object(payload, *, peer: str, max_bytes: int | None = None):
    """The object ``peer`` sent with ``encode_object``; WireError naming the peer for anything else."""
    header, arrays = decode(payload, peer=peer, **({} if max_bytes is None else {"max_bytes": max_bytes}))
    if set(header) != {"object"}:
        raise WireError(f"{peer} sent a message that is not an object: refused")
    return _value(header["object"], arrays, peer, 0)


def _tree(obj, arrays: list, depth: int):
    if depth > MAX_DEPTH:
        raise WireError(f"cannot send an object nested deeper than {MAX_DEPTH}")
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"float": repr(obj)}
    if isinstance(obj, torch.Size):
        return {"size": [int(d) for d in obj]}
    if isinstance(obj, (tuple, list)):
        items = [_tree(item, arrays, depth + 1) for item in obj]
        return {"tuple": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if not all(isinstance(key, str) for key in obj):
            raise WireError("cannot send a dict whose keys are not all strings")
        return {"dict": {key: _tree(value, arrays, depth + 1) for key, value in obj.items()}}
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        arrays.append(obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj)
        return {"tensor" if isinstance(obj, torch.Tensor) else "ndarray": len(arrays) - 1}
    raise WireError(f"cannot send an object of type {type(obj).__name__} between parties")


def _value(node, arrays: list, peer: str, depth: int):
    if depth > MAX_DEPTH:
        raise WireError(f"{peer} sent an object nested deeper than {MAX_DEPTH}: refused")
    if node is None or isinstance(node, (bool, int, str, float)):
        return node
    if isinstance(node, list):
        return [_value(item, arrays, peer, depth + 1) for item in node]
    if isinstance(node, dict) and len(node) == 1:
        (tag, body), = node.items()
        if tag == "size" and isinstance(body, list) and all(isinstance(d, int) and d >= 0 for d in body):
            return torch.Size(body)
        if tag == "tuple" and isinstance(body, list):
            return tuple(_value(item, arrays, peer, depth + 1) for item in body)
        if tag == "dict" and isinstance(body, dict):
            return {key: _value(value, arrays, peer, depth + 1) for key, value in body.items()}
        if tag == "float" and body in ("inf", "-inf", "nan"):
            return float(body)
        if tag in ("tensor", "ndarray") and isinstance(body, int) and 0 <= body < len(arrays):
            array = np.array(arrays[body])  # a writable copy
            return torch.from_numpy(array) if tag == "tensor" else array
    raise WireError(f"{peer} sent an object of a form the wire does not carry: refused")
