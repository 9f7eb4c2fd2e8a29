"""CrypTen over our own links (targets/crypten/communicator.py): CrypTen's counters and logits as over gloo."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from aero_compile.capturing import example_input
from aero_compile.targets.crypten.communicator import decode_object, encode_object
from aero_compile.targets.crypten.runner import launch_parties
from aero_compile.targets.private.wire import WireError

pytestmark = pytest.mark.crypten

COUNTED = ("rounds", "bytes", "by_op")


def _counters(figures: dict) -> dict:
    """What CrypTen's communicator counted, per phase and op class (seconds left out: they are timings)."""
    strip = lambda block: {k: v for k, v in block.items() if k != "seconds"}  # noqa: E731
    forward = figures["forward"]
    return {"forward": {"rounds": forward["rounds"], "bytes": forward["bytes"],
                        "by_op": {op: strip(v) for op, v in forward["by_op"].items()}},
            **{phase: strip(figures[phase]) for phase in ("setup", "offline", "reveal")}}


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["tfp", "ttp"])
def test_link_communicator_counts_exactly_as_gloo(captured, provider):
    gm = captured("gpt2-tiny")
    ids = example_input(gm, seq_len=8, batch=1, seed=0)
    gloo = launch_parties({"g": gm}, ids, provider=provider, transport="gloo", timeout_s=120)
    link = launch_parties({"g": gm}, ids, provider=provider, transport="link", timeout_s=120)
    for rank in (0, 1):  # the owner's counters include its requests to the dealer under ttp
        assert _counters(link[rank]["g"]) == _counters(gloo[rank]["g"]), rank
    assert link[1]["g"]["forward"]["rounds"] > 300
    plain = gm(ids)
    plain = plain[0] if isinstance(plain, (tuple, list)) else plain
    error_gloo = (gloo[1]["g"]["logits"] - plain).abs().max().item()
    error_link = (link[1]["g"]["logits"] - plain).abs().max().item()
    # the shares are random (CrypTen seeds from os.urandom), so the last fixed-point bits differ run to run
    assert error_link < 0.01 and error_gloo < 0.01
    assert (link[1]["g"]["logits"] - gloo[1]["g"]["logits"]).abs().max().item() < 2 * max(error_gloo, error_link) + 1e-4


def test_objects_travel_typed_and_pickles_are_refused():
    request = {"function": "additive", "device": None, "args": (torch.Size([2, 3]), torch.Size([3]), "matmul"),
               "kwargs": {}, "scales": {"a": 0.5, "b": float("inf")}, "mask": torch.arange(4), "np": np.ones(2)}
    back = decode_object(encode_object(request), peer="the model owner (rank 0)")
    assert back.keys() == request.keys() and back["args"] == request["args"]
    assert isinstance(back["args"][0], torch.Size) and back["scales"] == request["scales"]
    assert torch.equal(back["mask"], request["mask"]) and np.array_equal(back["np"], request["np"])
    with pytest.raises(WireError, match="the dealer .*pickle"):
        decode_object(pickle.dumps(request), peer="the dealer")
    with pytest.raises(WireError, match="cannot send an object of type"):
        encode_object({"f": lambda: 0})
