"""The Python objects CrypTen parties send each other, as typed wire messages instead of pickles.

CrypTen 0.4.1 moves a few objects with ``send_obj`` / ``recv_obj`` / ``broadcast_obj`` and unpickles
what arrives. What it (and our lowering) actually sends is plain data:

- the ``ttp`` dealer's requests: ``{"function": str, "device": str | None, "args": (torch.Size, ...,
  op name), "kwargs": {...}}`` and the string ``"terminate"``; its answers: a ``torch.Size``;
- a tensor's size when a share is made with ``broadcast_size=True``: a ``torch.Size``;
- the owner's norm scales (``lowering``): ``{node name: float}``, or tensors / lists of floats.

``encode_object`` writes such an object as one ``private.wire`` message: a JSON tree with tagged
containers in the header, tensors and arrays as typed arrays after it. Anything else (a class
instance, a function, a module) is refused on send; ``decode_object`` rebuilds only these types and
refuses any other message in one line naming the peer.

    payload = encode_object({"function": "square", "device": "cpu", "args": (torch.Size([2]),), "kwargs": {}})
    request = decode_object(payload, peer="the model owner (rank 0)")
"""

from __future__ import annotations

import math

import numpy as np
import torch

from aero_compile.targets.private.wire import WireError, decode, encode

# A request or a scale table is small; a bound keeps a hostile peer from nesting its way to a crash.
MAX_DEPTH = 16
MAX_ITEMS = 100_000
_TAGS = ("tuple", "size", "dict", "tensor", "ndarray", "dtype", "float")


def encode_object(obj) -> bytes:
    """One wire message holding ``obj`` (plain data, tuples, torch.Size, tensors, arrays); WireError otherwise."""
    arrays: list[np.ndarray] = []
    tree = _to_tree(obj, arrays, 0)
    return encode({"object": tree}, arrays)


def decode_object(payload: bytes | bytearray | memoryview, *, peer: str, max_bytes: int | None = None):
    """The object ``peer`` sent (see ``encode_object``); WireError naming the peer if it is anything else."""
    kwargs = {} if max_bytes is None else {"max_bytes": max_bytes}
    header, arrays = decode(payload, peer=peer, **kwargs)
    if set(header) != {"object"}:
        raise WireError(f"{peer} sent a message that is not an object: refused")
    counter = [0]
    return _from_tree(header["object"], arrays, peer, 0, counter)


def _to_tree(obj, arrays: list, depth: int):
    if depth > MAX_DEPTH:
        raise WireError(f"cannot send an object nested deeper than {MAX_DEPTH} levels")
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        # JSON has no inf/nan: such a float travels by name
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(obj, torch.Size):
        return {"size": [int(d) for d in obj]}
    if isinstance(obj, torch.dtype):
        return {"dtype": str(obj).removeprefix("torch.")}
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            raise WireError("cannot send a bfloat16 tensor: convert it to float32 first")
        arrays.append(tensor.contiguous().numpy())
        return {"tensor": len(arrays) - 1}
    if isinstance(obj, np.ndarray):
        arrays.append(obj)
        return {"ndarray": len(arrays) - 1}
    if isinstance(obj, list):
        return [_to_tree(item, arrays, depth + 1) for item in obj]
    if isinstance(obj, tuple):
        return {"tuple": [_to_tree(item, arrays, depth + 1) for item in obj]}
    if isinstance(obj, dict):
        if not all(isinstance(key, str) for key in obj):
            raise WireError("cannot send a dict whose keys are not all strings")
        return {"dict": {key: _to_tree(value, arrays, depth + 1) for key, value in obj.items()}}
    raise WireError(f"cannot send an object of type {type(obj).__name__} between parties: "
                    "the wire carries plain data, sizes and tensors only")


def _from_tree(node, arrays: list, peer: str, depth: int, counter: list):
    counter[0] += 1
    if depth > MAX_DEPTH or counter[0] > MAX_ITEMS:
        raise WireError(f"{peer} sent an object nested deeper than {MAX_DEPTH} levels or over {MAX_ITEMS:,} items")
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_from_tree(item, arrays, peer, depth + 1, counter) for item in node]
    if not isinstance(node, dict) or len(node) != 1 or next(iter(node)) not in _TAGS:
        raise WireError(f"{peer} sent an object of an unknown form: {str(node)[:80]}")
    (tag, body), = node.items()
    if tag == "tuple" and isinstance(body, list):
        return tuple(_from_tree(item, arrays, peer, depth + 1, counter) for item in body)
    if tag == "dict" and isinstance(body, dict):
        return {key: _from_tree(value, arrays, peer, depth + 1, counter) for key, value in body.items()}
    if tag == "size" and isinstance(body, list) and all(type(d) is int and d >= 0 for d in body):
        return torch.Size(body)
    if tag == "dtype" and isinstance(body, str) and isinstance(getattr(torch, body, None), torch.dtype):
        return getattr(torch, body)
    if tag in ("tensor", "ndarray") and type(body) is int and 0 <= body < len(arrays):
        array = arrays[body].copy()  # writable, and not a view into the received buffer
        return array if tag == "ndarray" else torch.from_numpy(array)
    if tag == "float" and body in ("inf", "-inf", "nan"):
        return float(body)
    raise WireError(f"{peer} sent a malformed '{tag}' entry: {str(body)[:80]}")
