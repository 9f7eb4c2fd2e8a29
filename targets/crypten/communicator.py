"""CrypTen's communicator over our own explicit links (``private.link.mesh``): shapeable, TLS-able, no pickles.

    install(plan)          # in a party process, before crypten.init() (or the dealer's TTPServer())
    crypten.init()         # CrypTen now talks through LinkCommunicator

Why: gloo (CrypTen's ``DistributedCommunicator``) connects its pairs to ephemeral ports advertised
through the torch store, so no relay (the emulated link) can sit between the parties and no TLS can be
put around them; and CrypTen's ``*_obj`` calls unpickle what a peer sends. This class implements the
same interface over ``Mesh`` (one TCP connection per pair and direction, typed frames): every tensor
travels as a typed array, every object as ``wire_objects`` (never pickle).

Counters: each method is wrapped in CrypTen's own ``_logging`` decorator and has the same name and
arguments as DistributedCommunicator's, so ``comm_rounds`` and ``comm_bytes`` are counted by CrypTen's
code exactly as before (including the dealer's groups, which count as CrypTen counts them: with
``world_size`` = the two parties). The raw torch.distributed calls CrypTen's dealer makes outside the
communicator (``ttp_provider.dist``: the seed exchange and barrier at setup) are served, uncounted as
before, by ``_DealerDist``.

Collectives are direct exchanges between the members (every member sends to every other, then
combines in rank order): for the two parties one network round each, as gloo's; integer SUM and XOR
give the same bits in any order.
"""

from __future__ import annotations

import numpy as np
import torch

from aero_compile.targets.private.link.mesh import Mesh, MeshPlan
from aero_compile.targets.private.wire import WireError

from .compat import import_crypten
from .wire_objects import decode_object, encode_object  # typed objects, never pickle

crypten = import_crypten()
from crypten.communicator.communicator import Communicator, _logging  # noqa: E402

from torch.distributed import ReduceOp  # noqa: E402


class Group:
    """A set of ranks (CrypTen's main group, the dealer's two groups) and its two channels.

    As in gloo, a point-to-point receive only ever matches a point-to-point send (``p2p``) and a
    collective only a collective, so a party that waits for a message nobody sends waits, as it did.
    """

    def __init__(self, channel: str, ranks: list[int]):
        self.channel, self.ranks = channel, list(ranks)
        self.p2p = Point(f"{channel}/p2p", self.ranks)

    def __repr__(self):
        return f"Group({self.channel}, {self.ranks})"


class Point:
    """The point-to-point channel of a group."""

    def __init__(self, channel: str, ranks: list[int]):
        self.channel, self.ranks = channel, ranks


class _Done:
    """A finished isend (sends complete when the bytes are handed to the link)."""

    def wait(self, *args, **kwargs):
        return True

    def is_completed(self):
        return True


class _Receive:
    """An irecv: the message is taken from the link, and copied into the tensor, at wait()."""

    def __init__(self, communicator, tensor, src, group):
        self.communicator, self.tensor, self.src, self.group, self.done = communicator, tensor, src, group, False

    def wait(self, *args, **kwargs):
        if not self.done:
            self.tensor.data.copy_(self.communicator._receive_tensors(self.src, self.group, [self.tensor])[0])
            self.done = True
        return True

    def is_completed(self):
        return self.done


def _combine(tensors: list[torch.Tensor], op) -> torch.Tensor:
    result = tensors[0].clone()
    for tensor in tensors[1:]:
        if op == ReduceOp.SUM:
            result += tensor
        elif op == ReduceOp.BXOR:
            result ^= tensor
        elif op == ReduceOp.PRODUCT:
            result *= tensor
        else:
            raise ValueError(f"reduce op {op} is not supported by the link communicator")
    return result


class LinkCommunicator(Communicator):
    """CrypTen's Communicator interface over ``Mesh``; ``install(plan)`` makes CrypTen use it."""

    BYTES_PER_ELEMENT = 8
    instance = None
    plan: MeshPlan | None = None  # set by ``install`` before crypten.init()

    def __init__(self, init_ttp: bool = False):
        plan = type(self).plan
        self.world_size = len(plan.ranks) - 1 if init_ttp else len(plan.ranks)  # the dealer is not a party
        self.rank = plan.rank
        self.reset_communication_stats()
        self._name = f"rank{self.rank}"
        total = self.world_size + 1 if init_ttp else self.world_size
        self.main_group = Group("main", list(range(self.world_size)))
        self.ttp_group = Group("ttp", list(range(total)))
        self.ttp_comm_group = Group("ttp-comm", [0, total - 1])
        self.ttp_initialized = init_ttp
        self.mesh = Mesh.join(plan)

    # ---- lifecycle, as DistributedCommunicator -------------------------------------------------------
    @classmethod
    def is_initialized(cls):
        return cls.instance is not None

    @classmethod
    def initialize(cls, rank, world_size, init_ttp=False):
        cls.instance = cls(init_ttp=init_ttp)

    @classmethod
    def get(cls):
        return cls.instance

    @classmethod
    def shutdown(cls):
        instance = cls.instance
        if instance.rank == 0 and instance.ttp_initialized:
            instance.send_obj("terminate", instance.get_ttp_rank(), instance.ttp_group)
        instance.mesh.close()
        cls.instance = None

    # ---- the link ------------------------------------------------------------------------------------
    def _peers(self, group: Group) -> list[int]:
        return [r for r in group.ranks if r != self.rank]

    def _send_tensors(self, dst: int, group: Group, tensors) -> None:
        self.mesh.send(dst, group.channel, {"kind": "tensors"}, [t.detach().contiguous().numpy() for t in tensors])

    def _receive_tensors(self, src: int, group: Group, like) -> list[torch.Tensor]:
        """The tensors ``src`` sent, checked against the shapes this party expects (``like``)."""
        header, arrays = self.mesh.receive(src, group.channel)
        name = self.mesh.plan.names[src]
        if header.get("kind") != "tensors" or len(arrays) != len(like):
            raise WireError(f"{name} sent {header.get('kind')!r} with {len(arrays)} arrays where {len(like)} tensors "
                            "were expected: the parties are out of step")
        out = []
        for array, expected in zip(arrays, like):
            # gloo checks the element count, not the shape (CrypTen sends a 0-d seed into a 1-element tensor)
            shape = tuple(expected) if isinstance(expected, (torch.Size, tuple, list)) else tuple(expected.shape)
            if array.size != int(np.prod(shape, dtype=np.int64)):
                raise WireError(f"{name} sent a tensor of shape {tuple(array.shape)} where {shape} was expected: "
                                "the parties are out of step")
            out.append(torch.from_numpy(array.reshape(shape)))  # a writable view of the received frame
        return out

    def _exchange(self, tensors, group: Group) -> list[list[torch.Tensor]]:
        """Every member's tensors, in rank order (one round: send to all, then receive from all)."""
        for peer in self._peers(group):
            self._send_tensors(peer, group, tensors)
        return [list(tensors) if r == self.rank else self._receive_tensors(r, group, tensors) for r in group.ranks]

    def _barrier(self, group: Group) -> None:
        for peer in self._peers(group):
            self.mesh.send(peer, group.channel, {"kind": "barrier"})
        for peer in self._peers(group):
            header, _ = self.mesh.receive(peer, group.channel)
            if header.get("kind") != "barrier":
                raise WireError(f"{self.mesh.plan.names[peer]} sent {header.get('kind')!r} at a barrier: out of step")

    def _send_object(self, obj, dst: int, group: Group) -> None:
        self.mesh.send(dst, group.channel, {"kind": "object"}, [np.frombuffer(encode_object(obj), dtype=np.uint8)])

    def _receive_object(self, src: int, group: Group):
        header, arrays = self.mesh.receive(src, group.channel)
        name = self.mesh.plan.names[src]
        if header.get("kind") != "object" or len(arrays) != 1 or arrays[0].dtype != np.uint8:
            raise WireError(f"{name} sent {header.get('kind')!r} where an object was expected: refused")
        return decode_object(arrays[0].tobytes(), peer=name)

    # ---- CrypTen's interface (names and arguments as DistributedCommunicator's: _logging reads them) ------
    @_logging
    def send(self, tensor, dst):
        self._send_tensors(dst, self.main_group.p2p, [tensor])

    @_logging
    def recv(self, tensor, src=None):
        result = tensor.clone()
        result.data.copy_(self._receive_tensors(src, self.main_group.p2p, [tensor])[0])
        return result

    @_logging
    def isend(self, tensor, dst):
        self._send_tensors(dst, self.main_group.p2p, [tensor])
        return _Done()

    @_logging
    def irecv(self, tensor, src=None):
        return _Receive(self, tensor, src, self.main_group.p2p)

    @_logging
    def scatter(self, scatter_list, src, size=None, device=None):
        if src != self.get_rank():
            if size is None:
                size = scatter_list[self.get_rank()].size()
            return self._receive_tensors(src, self.main_group, [torch.Size(size)])[0].long()
        for peer in self._peers(self.main_group):
            self._send_tensors(peer, self.main_group, [scatter_list[peer].data])
        return scatter_list[self.get_rank()].data

    @_logging
    def reduce(self, input, dst, op=ReduceOp.SUM, batched=False):
        tensors = [x.data for x in input] if batched else [input.data]
        if self.rank != dst:
            self._send_tensors(dst, self.main_group, tensors)
            return None
        parts = [tensors if r == self.rank else self._receive_tensors(r, self.main_group, tensors)
                 for r in self.main_group.ranks]
        reduced = [_combine([part[i] for part in parts], op) for i in range(len(tensors))]
        return reduced if batched else reduced[0]

    @_logging
    def all_reduce(self, input, op=ReduceOp.SUM, batched=False):
        tensors = [x.data for x in input] if batched else [input.data]
        parts = self._exchange(tensors, self.main_group)
        reduced = [_combine([part[i] for part in parts], op) for i in range(len(tensors))]
        return reduced if batched else reduced[0]

    @_logging
    def gather(self, tensor, dst):
        if self.rank != dst:
            self._send_tensors(dst, self.main_group, [tensor.data])
            return [None]
        return [tensor.data.clone() if r == self.rank else self._receive_tensors(r, self.main_group, [tensor])[0]
                for r in self.main_group.ranks]

    @_logging
    def all_gather(self, tensor):
        return [part[0] for part in self._exchange([tensor.data], self.main_group)]

    @_logging
    def broadcast(self, input, src, group=None, batched=False):
        group = self.main_group if group is None else group
        tensors = list(input) if batched else [input]
        if self.rank == src:
            for peer in self._peers(group):
                self._send_tensors(peer, group, [t.data for t in tensors])
        else:
            for tensor, received in zip(tensors, self._receive_tensors(src, group, tensors)):
                tensor.data.copy_(received)
        return input

    @_logging
    def barrier(self):
        self._barrier(self.main_group)

    @_logging
    def send_obj(self, obj, dst, group=None):
        self._send_object(obj, dst, (self.main_group if group is None else group).p2p)

    @_logging
    def recv_obj(self, src, group=None):
        return self._receive_object(src, (self.main_group if group is None else group).p2p)

    @_logging
    def broadcast_obj(self, obj, src, group=None):
        group = self.main_group if group is None else group
        if self.rank == src:
            assert obj is not None, "src party must provide obj for broadcast"
            for peer in self._peers(group):
                self._send_object(obj, peer, group)
            return obj
        return self._receive_object(src, group)

    def get_world_size(self):
        return self.world_size

    def get_rank(self):
        return self.rank

    def get_ttp_rank(self):
        return self.get_world_size()

    def set_name(self, name):
        assert isinstance(name, str), f"Improper name provided to process on rank {self.get_rank()}"
        self._name = name

    def get_name(self):
        return self._name

    def get_distributed_backend(self):
        return "aero-link"


class _DealerDist:
    """The torch.distributed calls CrypTen's ttp_provider makes itself (seeds, barrier), over our links."""

    ReduceOp = ReduceOp

    @staticmethod
    def isend(tensor, dst, group=None):
        LinkCommunicator.instance._send_tensors(dst, group.p2p, [tensor])
        return _Done()

    @staticmethod
    def irecv(tensor, src, group=None):
        return _Receive(LinkCommunicator.instance, tensor, src, group.p2p)

    @staticmethod
    def barrier(group=None):
        LinkCommunicator.instance._barrier(group)


def install(plan: MeshPlan) -> None:
    """Make CrypTen (in this process) communicate through ``LinkCommunicator`` over ``plan``'s links."""
    import crypten.communicator as comm
    from crypten.mpc.provider import ttp_provider

    LinkCommunicator.plan = plan
    comm.DistributedCommunicator = LinkCommunicator  # what crypten.communicator's get/_init/uninit look up
    ttp_provider.dist = _DealerDist
