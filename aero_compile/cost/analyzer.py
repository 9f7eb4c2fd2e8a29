"""Analyze a graph under a protocol profile: the rounds, bytes and latency of one private forward pass.

One pass over the classified ops (linear in graph size): shapes at [batch, seq_len], who knows each
value (``secrecy.py``), the protocol each op runs and its cost (``profiles.py``), and a networkx
DiGraph of ops whose longest path in rounds is the critical path.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import networkx as nx
import torch.fx as fx

from ..ops import Op, OpKind, classify_graph
from ..errors import AeroError, describe
from ..graph_info import graph_info
from ..records import OpCost, optional, to_json
from ..shapes import TensorMeta, propagate_shapes
from .features import LOCAL_COMPUTE, MASKED_WEIGHT_PRODUCT, WEIGHT_MASK, Step, local_step, masked_weights, offline_steps, protocol_steps
from .latency import LatencyModel
from .machine import compute_timed_on
from .profiles import Network, Profile, ProtocolCost, load_profile, resolve_network
from ..secrecy import WEIGHT_MASK_MODES, cache_factors, propagate_secrecy


@dataclass
class OpRecord:
    """One costed op of the graph."""

    name: str
    kind: str  # the OpKind value it is reported under
    layer: int | None
    module_path: str
    shape: tuple
    features: dict
    rounds: int
    bytes: float
    compute_s: float
    approximate: bool = False
    on_critical_path: bool = False
    steps: tuple[Step, ...] = ()  # the protocols it runs, each priced by its profile entry
    messages: float = 0.0  # what the latency model counts (``latency.py``): messages where measured, else rounds
    refill_messages: float = 0.0  # of ``messages``, the silent-OT refills' expected share (SPU)


@dataclass(frozen=True)
class Link:
    """The network a cost was computed for, as the report states it."""

    bandwidth_mbps: float | None  # None: no link (loopback)
    rtt_ms: float


@dataclass
class CostSummary:
    """The ``cost`` section of the report for one graph: totals, per op kind (and layer), what was not costed."""

    protocol: str
    network: Link
    rounds: int
    bytes: int
    latency_s: float
    by_op: dict[str, OpCost]
    schedule: str
    bytes_counted: str
    compute_s: float
    seq_len: int
    batch: int
    by_layer: dict[str, OpCost] | None = optional()
    unsupported_ops: dict[str, list[str]] | None = optional()
    approximate_ops: list[str] | None = optional()
    # Weights masked once per model: rounds/bytes/latency_s above are per query (online); ``offline``
    # is the setup, paid once per model (count: the weights masked).
    weight_masks: str | None = optional()
    offline: OpCost | None = optional()
    # where the profile's compute seconds were timed ({"cpu", "cores"}; None: not timed, a paper's figures)
    compute_timed_on: dict | None = optional()


@dataclass
class CostReport:
    """What ``analyze`` returns; ``summary()`` is the report's ``cost`` section, ``to_dict()`` its JSON."""

    profile: str
    schedule: str
    network: Network
    seq_len: int
    batch: int
    rounds: int
    bytes: int
    latency_s: float
    compute_s: float
    by_op: dict[str, OpCost]
    by_layer: dict[str, OpCost]
    ops: list[OpRecord]
    graph: nx.DiGraph
    unsupported: dict[str, list[str]] = field(default_factory=dict)
    approximate: list[str] = field(default_factory=list)
    bytes_counted: str = ""
    weight_masks: str = "per-query"  # "per-model" where the profile prices weights masked once
    offline: OpCost = field(default_factory=lambda: OpCost(latency_s=0.0))  # once per model, not per query
    compute_timed_on: dict | None = None  # ``machine.compute_timed_on``: the CPU the compute seconds are from
    emulation_s: float = 0.0  # of latency_s, the emulated link's relay CPU (0 on a real link: ``latency.py``)

    def summary(self, per_layer: bool = False) -> CostSummary:
        """The report's ``cost`` section (``by_layer`` only with ``per_layer``)."""
        return CostSummary(
            protocol=self.profile, network=Link(None if math.isinf(self.network.bandwidth_mbps)
                                                else self.network.bandwidth_mbps, self.network.rtt_ms),
            rounds=self.rounds, bytes=self.bytes, latency_s=self.latency_s, by_op=self.by_op,
            schedule=self.schedule, bytes_counted=self.bytes_counted, compute_s=self.compute_s,
            seq_len=self.seq_len, batch=self.batch, by_layer=self.by_layer if per_layer else None,
            unsupported_ops=self.unsupported or None, approximate_ops=self.approximate or None,
            weight_masks=self.weight_masks, offline=self.offline, compute_timed_on=self.compute_timed_on)

    def to_dict(self, per_layer: bool = False) -> dict:
        """The JSON ``cost`` object of the report."""
        return to_json(self.summary(per_layer))


def analyze(gm: fx.GraphModule, profile: str | Profile = "crypten", network: str | Network = "lan", *,
            seq_len: int = 128, batch: int = 1, bandwidth_mbps: float | None = None,
            rtt_ms: float | None = None, weight_masks: str = "per-model",
            protocol_settings: str | None = None, provider: str | None = None,
            metas: dict | None = None) -> CostReport:
    """Cost of one private forward pass of ``gm`` on [batch, seq_len] tokens under ``profile``.

    ``weight_masks="per-model"`` (where the profile prices it): each weight is masked once per model,
    so a product with it opens only its activation per query; the masking is ``report.offline``.
    ``protocol_settings``: the profile variant measured under other engine settings (crypten: fixed-point
    bits and function iterations, ``targets/crypten/protocol_settings.py``); None: the engine's defaults.
    ``latency_s`` is ``latency.py``'s model (network term + measured compute); ``provider="ttp"`` (CrypTen)
    adds the dealer's round trips and takes the compute timed under ttp (``Profile.for_provider``).
    """
    if weight_masks not in WEIGHT_MASK_MODES:
        raise AeroError(f"unknown weight-mask mode '{weight_masks}': use one of {', '.join(WEIGHT_MASK_MODES)}")
    profile = load_profile(profile).variant(protocol_settings).for_provider(provider)
    if not (profile.supports(MASKED_WEIGHT_PRODUCT) and profile.supports(WEIGHT_MASK)):
        weight_masks = "per-query"  # e.g. bumblebee: the server holds its weights in the clear
    net = resolve_network(network, bandwidth_mbps, rtt_ms)
    metas = metas if metas is not None else shapes_at(gm, seq_len, batch)  # given: a program of other inputs
    levels = propagate_secrecy(gm)
    ops = classify_graph(gm)
    cached = cache_factors(gm, levels, metas) if weight_masks == "per-model" else {}  # generation programs
    records, unsupported = _cost_ops(ops, profile, levels, metas, weight_masks, cached)
    local = _local_compute(ops, profile, levels, metas)
    graph = _op_graph(ops, records)
    rounds = _mark_rounds(graph, records, profile.schedule)
    wire = profile.wire_bytes_per_counted_byte
    model = LatencyModel.of(profile, provider)
    by_op: dict[str, OpCost] = {}
    by_layer: dict[str, OpCost] = {}
    for record in records.values():
        on_path = profile.schedule == "sequential" or record.on_critical_path
        counted_rounds = record.rounds if on_path else 0
        latency = model.network_s(record.messages if on_path else 0, record.bytes * wire, net,
                                  record.refill_messages if on_path else 0) + record.compute_s
        layer_key = "embed/head" if record.layer is None else str(record.layer)
        for table, key in ((by_op, record.kind), (by_layer, layer_key)):
            table.setdefault(key, OpCost(latency_s=0.0, elements=0)).add(OpCost(
                rounds=counted_rounds, bytes=record.bytes, latency_s=latency, count=1,
                elements=int(record.features.get("elements", 0))))
    for op, seconds in local:  # compute only: a row of its own ("local"), in its layer's row too
        layer_key = "embed/head" if op.layer is None else str(op.layer)
        for table, key in ((by_op, LOCAL_COMPUTE), (by_layer, layer_key)):
            table.setdefault(key, OpCost(latency_s=0.0, elements=0)).add(OpCost(latency_s=seconds, count=1, elements=0))
    local_s = sum(seconds for _, seconds in local)
    total_bytes = sum(r.bytes for r in records.values())
    # the ops' compute plus what one execution of the program costs whatever it computes (``latency.py``)
    compute = sum(r.compute_s for r in records.values()) + local_s + model.fixed_s_per_execution
    # sequential: every op's messages wait in turn; critical path: the longest path's rounds
    counted = sum(r.messages for r in records.values()) if profile.schedule == "sequential" else rounds
    refills = sum(r.refill_messages for r in records.values()) if profile.schedule == "sequential" else 0.0
    latency = model.network_s(counted, total_bytes * wire, net, refills) + compute
    emulation = model.emulation_s(counted, total_bytes * wire, net)  # inside the network term above
    for names in unsupported.values():
        warnings.warn(f"cost: {len(names)} op(s) the {profile.name} profile cannot cost were counted as zero: "
                      f"{', '.join(names[:5])}", stacklevel=2)
    return CostReport(
        profile=profile.name, schedule=profile.schedule, network=net, seq_len=seq_len, batch=batch,
        rounds=int(rounds), bytes=int(round(total_bytes)), latency_s=latency, compute_s=compute, emulation_s=emulation,
        by_op=dict(sorted(by_op.items(), key=lambda kv: -kv[1].bytes)),
        by_layer=dict(sorted(by_layer.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0))),
        ops=list(records.values()), graph=graph, unsupported=unsupported,
        approximate=sorted(r.name for r in records.values() if r.approximate),
        bytes_counted=profile.data.get("bytes_counted", ""),
        weight_masks=weight_masks, offline=_offline(records, profile, levels, metas, net),
        compute_timed_on=compute_timed_on(profile.data),
    )


def _offline(records: dict[Op, OpRecord], profile: Profile, levels, metas, net: Network) -> OpCost:
    """Masking each weight once (per model): every distinct weight a masked product reads, one opening each."""
    weights: dict[fx.Node, None] = {}
    for op, record in records.items():
        if any(step.entry == MASKED_WEIGHT_PRODUCT for step in record.steps):
            weights.update(dict.fromkeys(masked_weights(op, levels, metas)))
    total = OpCost(latency_s=0.0)
    for step in offline_steps(list(weights), metas):
        cost = profile.cost(step.entry, step.features)
        total.add(OpCost(rounds=cost.rounds, bytes=cost.bytes, count=1, latency_s=cost.rounds * net.rtt_s
                         + net.transfer_s(cost.bytes * profile.wire_bytes_per_counted_byte)))
    total.bytes = int(round(total.bytes))
    return total


def shapes_at(gm: fx.GraphModule, seq_len: int, batch: int = 1) -> dict[fx.Node, TensorMeta]:
    """Shapes of every node at [batch, seq_len]; a bad length is a one-line AeroError."""
    if not (isinstance(seq_len, int) and seq_len >= 1 and isinstance(batch, int) and batch >= 1):
        raise AeroError(f"seq_len and batch must be positive integers, got seq_len={seq_len}, batch={batch}")
    graph_info(gm).check_seq_len(seq_len)
    try:
        return propagate_shapes(gm, seq_len=seq_len, batch=batch)
    except Exception as exc:
        raise AeroError(f"the graph does not run at [batch {batch}, seq_len {seq_len}]: {describe(exc, 200)}") from None


def _cost_ops(ops: list[Op], profile: Profile, levels, metas, weight_masks: str,
              cached: dict) -> tuple[dict[Op, OpRecord], dict[str, list[str]]]:
    records: dict[Op, OpRecord] = {}
    unsupported: dict[str, list[str]] = {}
    for op in ops:
        priced = protocol_steps(op, levels, metas, weight_masks, cached)
        if priced is None:
            continue  # local: no communication
        kind, features, steps = priced
        steps = _supported_steps(profile, kind, steps)
        if steps is None:
            label = op.name if kind is OpKind.UNKNOWN else f"{op.name} ({kind.value})"
            unsupported.setdefault(kind.value, []).append(label)
            continue
        cost = _total([profile.cost(step.entry, step.features) for step in steps])
        meta = metas.get(op.output)
        records[op] = OpRecord(op.name, kind.value, op.layer, op.module_path, tuple(meta.shape) if meta else (),
                               features, cost.rounds, cost.bytes, cost.seconds, cost.approximate, steps=tuple(steps),
                               messages=cost.messages, refill_messages=cost.refill_messages)
    return records, unsupported


def _local_compute(ops: list[Op], profile: Profile, levels, metas) -> list[tuple[Op, float]]:
    """(op, compute seconds) of the ops that run locally on secret shares (``features.local_step``), where the
    profile times them (CrypTen); they communicate nothing."""
    steps = [(op, local_step(op, levels, metas)) for op in ops]
    return [(op, profile.cost(step.entry, step.features).seconds) for op, step in steps
            if step is not None and profile.supports(step.entry)]


def _supported_steps(profile: Profile, kind: OpKind, steps: list[Step]) -> list[Step] | None:
    """The steps the profile prices; a one-step form it lacks falls back to its kind's entry (None: neither)."""
    if kind is OpKind.UNKNOWN:
        return None
    if all(profile.supports(step.entry) for step in steps):
        return steps
    if len(steps) == 1 and profile.supports(kind.value):  # e.g. log_softmax priced as softmax by a fitted profile
        return [Step(kind.value, steps[0].features)]
    return None


def _total(costs: list[ProtocolCost]) -> ProtocolCost:
    messages = sum(c.rounds if c.messages is None else c.messages for c in costs)
    return ProtocolCost(sum(c.rounds for c in costs), sum(c.bytes for c in costs), sum(c.seconds for c in costs),
                        any(c.approximate for c in costs), messages, sum(c.refill_messages for c in costs))


def _op_graph(ops: list[Op], records: dict[Op, OpRecord]) -> nx.DiGraph:
    """Every op a node (kind, shape, rounds, bytes), an edge per data dependency between ops."""
    graph = nx.DiGraph()
    op_of = {node: op for op in ops for node in op.nodes}
    for op in ops:
        record = records.get(op)
        graph.add_node(op, kind=record.kind if record else op.kind.value, name=op.name,
                       rounds=record.rounds if record else 0, bytes=record.bytes if record else 0.0)
        for node in op.nodes:
            for arg in node.all_input_nodes:
                source = op_of.get(arg)
                if source is not None and source is not op:
                    graph.add_edge(source, op)
    return graph


def _mark_rounds(graph: nx.DiGraph, records: dict[Op, OpRecord], schedule: str) -> int:
    """Total rounds: their sum (sequential) or the longest path in rounds (critical path, marked on records)."""
    if schedule == "sequential":
        return sum(r.rounds for r in records.values())
    depth: dict[Op, int] = {}
    best_pred: dict[Op, Op | None] = {}
    for op in nx.topological_sort(graph):
        preds = list(graph.predecessors(op))
        pred = max(preds, key=lambda p: depth[p], default=None)
        depth[op] = graph.nodes[op]["rounds"] + (depth[pred] if pred is not None else 0)
        best_pred[op] = pred
    if not depth:
        return 0
    op = max(depth, key=depth.get)
    total = depth[op]
    while op is not None:
        if op in records:
            records[op].on_critical_path = True
        op = best_pred[op]
    return total
