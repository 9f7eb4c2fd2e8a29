"""Lower an fx graph to CrypTen and run it on secret-shared input, measuring every op.

Use inside a party process whose CrypTen is initialised (see ``party.py``)::

    private = PrivateGraph(gm, crypten, owner=0, client=1)
    private.share(input_ids)            # client: its ids; owner: None (only the shape is public)
    logits, measure = private.forward() # CrypTensor logits, per-OpKind rounds/bytes/seconds

Values are split by ``aero_compile.secrecy`` (the rule the cost analyzer prices with, so
measured and predicted agree on what is free): public and owner values are computed in plaintext
(the owner's then secret-shared once, at setup); only secret ops run under MPC, through the dispatch
tables of ``dispatch.py`` (by OpKind, then by operator name inside regions and for structural ops).
The token embedding is a one-hot matmul: the client shares one_hot(input_ids), the owner the table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F

from aero_compile.secrecy import Secrecy, fixed_weights
from aero_compile.errors import AeroError
from aero_compile.ops import classify_graph, classify_node
from aero_compile.records import OpCost
from aero_compile.shapes import propagate_shapes

from aero_compile.targets.private.dispatch import LoweringContext
from aero_compile.targets.private.graph import SecretGraph, check_token_ids, owner_shares
from aero_compile.targets.private.norm_scaling import inv_sqrt_scales, owner_calibration_ids

from .dispatch import lower_node

LOCAL_COMPUTE = "local"  # the analyzer's row for ops on shares that communicate nothing (cost.features)
from .weight_masks import DEFAULT_WEIGHT_MASKS, WEIGHT_MASK_MODES, mask_weight


@dataclass
class ForwardMeasure(OpCost):
    """A private forward pass, as one party saw it: totals over the secret ops, and the same per OpKind value."""

    seconds: float | None = 0.0
    by_op: dict[str, OpCost] = field(default_factory=dict)


class Stopwatch:
    """Rounds, bytes and seconds spent between two points, from CrypTen's communicator counters."""

    def __init__(self, communicator):
        self.communicator = communicator

    def __enter__(self):
        stats = self.communicator.get_communication_stats()
        self.rounds, self.bytes, self.start = stats["rounds"], stats["bytes"], time.perf_counter()
        return self

    def __exit__(self, *exc):
        stats = self.communicator.get_communication_stats()
        self.measure = OpCost(rounds=int(stats["rounds"] - self.rounds), bytes=int(stats["bytes"] - self.bytes),
                              seconds=time.perf_counter() - self.start, count=1)


class PrivateGraph(LoweringContext):
    """One party's view of a graph under MPC: share the inputs, then run the forward pass."""

    def __init__(self, gm: fx.GraphModule, crypten, *, owner: int = 0, client: int = 1, provider: str = "tfp",
                 weight_masks: str = DEFAULT_WEIGHT_MASKS):
        if weight_masks not in WEIGHT_MASK_MODES:
            raise AeroError(f"unknown weight-mask mode '{weight_masks}': use one of {', '.join(WEIGHT_MASK_MODES)}")
        self.gm, self.crypten, self.owner, self.client = gm, crypten, owner, client
        self.provider, self.weight_masks = provider, weight_masks
        self.rank = crypten.communicator.get().get_rank()
        self.split = SecretGraph(gm)
        self.secrecy = self.split.secrecy
        self.ops = classify_graph(gm)
        self.input = self.split.input
        self.token_nodes = self.split.token_nodes  # the ids and views of them: one-hot CrypTensors here
        self.plain: dict[fx.Node, object] = {}   # public values, and the owner's values (zeros elsewhere)
        self.secret: dict[fx.Node, object] = {}  # CrypTensors
        self.scales: dict[str, float] = {}  # public inv_sqrt scales, from the owner (norm_scaling)
        self.inverses: dict[fx.Node, object] = {}  # division node -> 1/w, w the owner's (owner_shares)
        self.masked: dict[fx.Node, object] = {}  # weight node -> MaskedWeight (weights masked once per model)

    # -- setup: plaintext values and input sharing -------------------------------------------------

    def share(self, input_ids: torch.Tensor | None, batch: int, seq_len: int) -> None:
        """Compute public/owner values in plaintext and secret-share what the secret ops need."""
        self.shapes = propagate_shapes(self.gm, seq_len=seq_len, batch=batch)
        self.plain.update(self.split.plain_values(batch, seq_len, self.shapes))  # the ids: zeros, shape only
        values, inverses = owner_shares(self.gm, self.secrecy, self.plain)
        self.secret.update({node: self._share_owned(value) for node, value in values.items()})
        self.inverses = {node: self._share_owned(value) for node, value in inverses.items()}
        self._receive_scales(batch, seq_len)
        vocab = self.split.vocabulary_size(self.plain)
        if self.rank == self.client:
            check_token_ids(input_ids, batch, seq_len, vocab)
            one_hot = F.one_hot(input_ids, vocab).float()
        else:
            one_hot = torch.zeros(batch, seq_len, vocab)
        self.one_hot = self.crypten.cryptensor(one_hot, src=self.client)
        self.secret[self.input] = self.one_hot  # the only secret consumers of the ids are embeddings

    def mask_weights(self) -> None:
        """Once per model (after ``share``): mask every weight a secret product reads and open W - B.

        Nothing to do with ``weight_masks="per-query"``: each product then opens its weight side itself.
        """
        if self.weight_masks != "per-model":
            return
        for node in self.gm.graph.nodes:
            for weight in fixed_weights(node, classify_node(self.gm, node), self.secrecy, self.shapes):
                if weight not in self.masked:
                    self.masked[weight] = mask_weight(self.secret[weight], self.provider)

    def _receive_scales(self, batch: int, seq_len: int) -> None:
        # The owner calibrates on tokens of its own choosing (a fixed seed), never the client's.
        scales = None
        if self.rank == self.owner:
            calibration_ids = owner_calibration_ids(self.split.vocabulary_size(self.plain), batch, seq_len)
            scales = inv_sqrt_scales(self.gm, calibration_ids)
        self.scales = self.crypten.communicator.get().broadcast_obj(scales, self.owner)

    def _share_owned(self, value: torch.Tensor):
        if self.rank != self.owner:
            value = torch.zeros_like(value, dtype=torch.float32)  # only the shape is known here
        return self.crypten.cryptensor(value.float(), src=self.owner)

    # -- the private forward pass ---------------------------------------------------------------------

    def value(self, node: fx.Node):
        """What a secret op sees for an argument: a CrypTensor if secret or owner-shared, else plaintext."""
        if node in self.secret:
            return self.secret[node]
        if self.secrecy.get(node) is Secrecy.PUBLIC:
            return self.plain[node]
        raise AeroError(f"internal: value of '{node.name}' ({self.secrecy.get(node)}) is not available")

    def product_operand(self, node: fx.Node):
        """A factor of a linear, matmul or embedding: the MaskedWeight of a weight masked once, else ``value``."""
        return self.masked.get(node) or self.value(node)

    def forward(self):
        """Run every secret op under MPC; returns (output CrypTensor, ForwardMeasure)."""
        communicator = self.crypten.communicator.get()
        measure = ForwardMeasure()
        for op in self.ops:
            secret_nodes = [n for n in op.nodes if self.secrecy.get(n) is Secrecy.SECRET]
            if not secret_nodes:
                continue
            with Stopwatch(communicator) as watch:
                for node in secret_nodes:
                    self.secret[node] = lower_node(self, node)
            # an op that communicated nothing ran locally on the shares: the analyzer's "local" compute row
            kind = op.kind.value if watch.measure.rounds or watch.measure.bytes else LOCAL_COMPUTE
            measure.by_op.setdefault(kind, OpCost(seconds=0.0)).add(watch.measure)
            measure.add(watch.measure)
        return self._output(), measure

    def _output(self):
        return self.secret[self.split.output]  # SecretGraph refused a graph whose first output is not secret
