"""Test helper: run ``aero-compile`` as a multi-host party while recording everything its process opens.

    python tests/generation_owner_probe.py RECORD.json -- gpt2-tiny --run-private --party ...

Recorded, in order, in this process:

* ``opened``: every value CrypTen reconstructs here (``ArithmeticSharedTensor`` / ``BinarySharedTensor``
  ``reveal`` and ``reveal_batch``, which every ``get_plain_text`` and every protocol opening goes through),
  with the file that asked for it. Openings asked for by a masking protocol (``beaver.py``: x - a, y - b,
  x ^ a, ...; ``weight_masks.py``: W - B, share - a; ``cache_masks.py``: a new cached row minus its mask
  and share - a, in one opening) are one-time-pad masked: kept as their shapes.
  Any other opening is kept as its value (None where this party is not the destination).
* ``objects``: every object a peer sent (``send_obj`` / ``broadcast_obj`` over the typed wire), as its value.
* ``tensors``: every tensor message received outside an opening: sender and shapes.
"""

from __future__ import annotations

import json
import sys
import traceback

MASKING_FILES = ("beaver.py", "weight_masks.py", "cache_masks.py")


def _plain(value):
    import torch

    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "values": value.tolist()}
    if isinstance(value, torch.Size):
        return {"size": list(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def _shapes(value):
    import torch

    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (list, tuple)):
        return [_shapes(item) for item in value]
    return value


def install(record: dict) -> None:
    from aero_compile.targets.crypten.compat import import_crypten

    import_crypten()
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor
    from crypten.mpc.primitives.binary import BinarySharedTensor

    from aero_compile.targets.crypten import communicator

    depth = [0]

    def asked_by() -> str:
        for frame in reversed(traceback.extract_stack()[:-2]):
            if not frame.filename.endswith(("arithmetic.py", "binary.py", "mpc.py", "generation_owner_probe.py")):
                return frame.filename.rsplit("/", 1)[-1]
        return "?"

    def recording(method, kind):
        def wrapper(*args, **kwargs):
            depth[0] += 1
            try:
                value = method(*args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:  # reveal_batch of one tensor calls reveal: record the outer call once
                caller = asked_by()
                entry = {"kind": kind, "by": caller, "shapes": _shapes(value)}
                if caller not in MASKING_FILES:
                    entry["value"] = _plain(value)
                record["opened"].append(entry)
            return value
        return wrapper

    for cls in (ArithmeticSharedTensor, BinarySharedTensor):
        cls.reveal = recording(cls.reveal, f"{cls.__name__}.reveal")
        cls.reveal_batch = staticmethod(recording(cls.reveal_batch, f"{cls.__name__}.reveal_batch"))

    receive_object = communicator.LinkCommunicator._receive_object
    receive_tensors = communicator.LinkCommunicator._receive_tensors

    def objects(self, src, group):
        value = receive_object(self, src, group)
        record["objects"].append({"from": src, "value": _plain(value)})
        return value

    def tensors(self, src, group, like):
        value = receive_tensors(self, src, group, like)
        if depth[0] == 0:
            record["tensors"].append({"from": src, "shapes": _shapes(value)})
        return value

    communicator.LinkCommunicator._receive_object = objects
    communicator.LinkCommunicator._receive_tensors = tensors


def main() -> int:
    out, separator, *argv = sys.argv[1:]
    assert separator == "--"
    record = {"opened": [], "objects": [], "tensors": []}
    install(record)
    from aero_compile.cli import main as cli_main

    status = cli_main(argv)
    with open(out, "w") as handle:
        json.dump(record, handle)
    return status


if __name__ == "__main__":
    sys.exit(main())
