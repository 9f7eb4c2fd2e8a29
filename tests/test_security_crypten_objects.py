"""CrypTen's object messages (dealer requests, sizes, norm scales) travel typed; a pickle is never loaded."""

import multiprocessing
import pickle
import socket

import numpy as np
import pytest
import torch

from aero_compile.targets.crypten.wire_objects import decode_object, encode_object
from aero_compile.targets.private.wire import WireError

PEER = "the model owner (rank 0)"


class Boom:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("obj", [
    {"function": "additive", "device": "cpu", "args": (torch.Size([1, 8, 16]), torch.Size([16, 4]), "matmul"),
     "kwargs": {}},
    {"function": "aero_masked_triple", "device": None, "args": ("h.0.attn", torch.Size([2, 3]), True), "kwargs": {}},
    {"function": "aero_cache_rows", "device": None, "args": (7, torch.Size([1, 4, 16, 1]), 3), "kwargs": {}},
    {"function": "aero_cache_triple", "device": None, "args": (7, torch.Size([1, 4, 1, 16]), False), "kwargs": {}},
    "terminate",
    torch.Size([3, 0, 5]),
    {"h.0.ln_1": 0.25, "h.1.ln_2": 16.0, "odd": float("inf")},
    [0.5, -1.0, float("nan")],
    {"nested": [(1, 2.5, None, False), {"dtype": torch.int64}]},
])
def test_what_crypten_sends_round_trips_with_its_types(obj):
    back = decode_object(encode_object(obj), peer=PEER)
    assert repr(back) == repr(obj) and type(back) is type(obj)


def test_tensors_and_arrays_keep_dtype_shape_and_values():
    tensor = torch.arange(-6, 6, dtype=torch.int64).reshape(3, 4)
    array = np.linspace(0, 1, 5, dtype=np.float32)
    back_tensor, back_array = decode_object(encode_object((tensor, array)), peer=PEER)
    assert torch.equal(back_tensor, tensor) and back_tensor.dtype == torch.int64
    assert back_array.dtype == np.float32 and np.array_equal(back_array, array)
    back_tensor += 1  # writable: not a view into the received bytes


@pytest.mark.parametrize("obj", [Boom(), torch.nn.Linear(2, 2), print, {1: "int key"}, {"x": {1, 2}}])
def test_anything_else_is_refused_on_send(obj):
    with pytest.raises(WireError, match="cannot send"):
        encode_object(obj)


def test_a_pickle_is_refused_naming_the_peer(capsys):
    with pytest.raises(WireError, match=r"the model owner \(rank 0\).*pickle.*refused") as error:
        decode_object(pickle.dumps({"function": Boom()}), peer=PEER)
    assert "\n" not in str(error.value)
    assert "unpickled!" not in capsys.readouterr().out


@pytest.mark.parametrize("tree", [{"object": {"eval": "x"}}, {"object": {"tensor": 3}}, {"object": {"size": [-1]}},
                                  {"object": {"dtype": "nn"}}, {"other": 1}])
def test_unknown_forms_are_refused(tree):
    from aero_compile.targets.private.wire import encode

    with pytest.raises(WireError, match=r"the model owner \(rank 0\)"):
        decode_object(encode(tree), peer=PEER)


def test_deep_nesting_is_refused_both_ways():
    deep = "x"
    for _ in range(40):
        deep = [deep]
    with pytest.raises(WireError, match="nested deeper"):
        encode_object(deep)
    from aero_compile.targets.private.wire import encode

    with pytest.raises(WireError, match=r"the model owner \(rank 0\) sent an object nested deeper"):
        decode_object(encode({"object": deep}), peer=PEER)


def test_the_dealer_refuses_requests_it_does_not_serve():
    from aero_compile.targets.crypten.compat import _check_dealer_request

    good = {"function": "square", "device": "cpu", "args": (torch.Size([2]),), "kwargs": {}}
    assert _check_dealer_request(good, PEER) is good
    for served in ("aero_weight_mask", "aero_masked_triple", "aero_cache_rows", "aero_cache_triple"):
        request = {**good, "device": None, "function": served}
        assert _check_dealer_request(request, PEER) is request  # masks kept by the dealer: weights, cache rows
    for bad in [{**good, "function": "__init__"}, {**good, "function": "_setup_generators"},
                {**good, "function": "additive", "args": (torch.Size([2]), torch.Size([2]), "load")},
                {**good, "device": "cuda:7"}, {"function": "square"}, ["square"]]:
        with pytest.raises(WireError, match=r"the model owner \(rank 0\).*refused"):
            _check_dealer_request(bad, PEER)


# -- over a real torch.distributed group, as a party receives them -------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _victim(port: int, queue) -> None:
    import os

    os.environ.update(RANK="1", WORLD_SIZE="2", RENDEZVOUS=f"tcp://127.0.0.1:{port}", DISTRIBUTED_BACKEND="gloo")
    from aero_compile.targets.crypten.compat import import_crypten

    import_crypten()
    from crypten.communicator.distributed_communicator import DistributedCommunicator

    communicator = DistributedCommunicator()
    outcome = []
    for _ in range(3):
        try:
            outcome.append(("ok", repr(communicator.recv_obj(0))))
        except WireError as exc:
            outcome.append(("refused", str(exc)))
    try:
        outcome.append(("ok", repr(communicator.broadcast_obj(None, 0))))
    except WireError as exc:
        outcome.append(("refused", str(exc)))
    queue.put(outcome)


def _attacker(port: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=0)
    groups = [dist.new_group([0, 1]) for _ in range(3)]  # CrypTen's ttp_group, ttp_comm_group, main_group
    main = groups[2]

    def send(payload: bytes, announced: int | None = None):
        dist.send(torch.tensor(len(payload) if announced is None else announced, dtype=torch.int64), 1, group=main)
        if payload:
            dist.send(torch.frombuffer(bytearray(payload), dtype=torch.uint8), 1, group=main)

    send(encode_object({"h.0.ln_1": 0.25}))          # a well-formed message first
    send(pickle.dumps(Boom()))                       # a pickle, in the right framing
    send(b"", announced=1 << 40)                     # an absurd length: refused before any allocation
    pickled = pickle.dumps(["a", Boom()])
    dist.broadcast(torch.tensor(len(pickled), dtype=torch.int64), 0, group=main)
    dist.broadcast(torch.frombuffer(bytearray(pickled), dtype=torch.uint8), 0, group=main)


@pytest.mark.crypten
def test_a_party_refuses_a_pickle_and_an_oversized_object_from_its_peer():
    context = multiprocessing.get_context("spawn")
    port, queue = _free_port(), context.Queue()
    victim = context.Process(target=_victim, args=(port, queue))
    attacker = context.Process(target=_attacker, args=(port,))
    victim.start()
    attacker.start()
    try:
        outcome = queue.get(timeout=120)
    finally:
        for process in (attacker, victim):
            process.join(30)
            if process.is_alive():
                process.kill()
    assert outcome[0] == ("ok", "{'h.0.ln_1': 0.25}")
    assert outcome[1][0] == "refused" and "the model owner (rank 0)" in outcome[1][1] and "pickle" in outcome[1][1]
    assert outcome[2] == ("refused", "the model owner (rank 0) announced an object of 1,099,511,627,776 bytes, "
                                     "outside 1..67,108,864: refused")
    assert outcome[3][0] == "refused" and "pickle" in outcome[3][1]
    assert all("\n" not in text for _, text in outcome)


@pytest.mark.crypten
def test_crypten_object_methods_are_the_typed_ones():
    from aero_compile.targets.crypten.compat import import_crypten

    import_crypten()
    from crypten.communicator.distributed_communicator import DistributedCommunicator

    for name in ("send_obj", "recv_obj", "broadcast_obj"):
        method = getattr(DistributedCommunicator, name)
        assert getattr(method, "_aero_typed", False) and method.__name__ == name  # _logging counts by name
