"""Prefill and decode-step programs derived from a captured full-sequence decoder graph.

    programs = derive_programs(gm)            # gm: ac.capture(...), before or after any passes
    logits, *cache = programs.prefill(ids)    # ids [B, T] -> logits of position T-1 [B, 1, V], the K/V
    logits, *cache = programs.decode(token, *cache)   # token [B, 1] -> its logits, the cache + its row

Both are GraphModules built node by node from ``gm`` (``roles.py`` says which dims are positions):
public values (positions, masks, rotary tables) are computed at the context length and sliced to the
new rows where they meet per-position values; each cached tensor is the cached rows concatenated with
the new ones; what follows the last attention product (final FFN, final norm, LM head) runs for the
last position only. The decode step accepts any number of new tokens (a chunk): one is the usual step.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..errors import AeroError
from ..graph_info import META_KEY
from ..ops import OpKind, classify_node, takes_dim_range, takes_size_list, target_name
from ..secrecy import CACHE_DIMS_KEY, Secrecy
from .roles import K, Q, DecoderRoles, KeyCut, analyze_decoder

aten = torch.ops.aten

@dataclass(frozen=True)
class CacheEntry:
    """One tensor of the cache: its name in the programs, the layer it belongs to, its position dim."""

    name: str
    layer: int | None
    seq_dim: int
    source: str  # the node of the full-sequence graph whose rows it keeps


@dataclass
class GenerationPrograms:
    prefill: fx.GraphModule
    decode: fx.GraphModule
    cache: list[CacheEntry]


def derive_programs(gm: fx.GraphModule) -> GenerationPrograms:
    """Prefill and decode step of ``gm``; a graph they cannot be derived from is refused in one line."""
    roles = analyze_decoder(gm)
    cache = [CacheEntry(f"past_{i}", cut.layer, cut.seq_dim, cut.node.name) for i, cut in enumerate(roles.cuts)]
    return GenerationPrograms(_Builder(gm, roles, with_past=False).build(),
                              _Builder(gm, roles, with_past=True).build(), cache)


class _Builder:
    """Copies ``gm``'s graph into a new one with two lengths (new rows, context) and a cache."""

    def __init__(self, gm: fx.GraphModule, roles: DecoderRoles, with_past: bool):
        self.gm, self.roles, self.with_past = gm, roles, with_past
        self.graph = fx.Graph()
        self.env: dict[fx.Node, object] = {}
        self.slices: dict[tuple, fx.Node] = {}
        self.cut_index = {cut.node: i for i, cut in enumerate(roles.cuts)}

    def build(self) -> fx.GraphModule:
        graph = self.graph
        self.ids = graph.placeholder("input_ids")
        self.past = [graph.placeholder(f"past_{i}") for i in range(len(self.roles.cuts))] if self.with_past else []
        self.rows = graph.call_function(aten.sym_size.int, (self.ids, 1))  # new positions in this call
        if self.with_past:
            first: KeyCut = self.roles.cuts[0]
            self.past_len = graph.call_function(aten.sym_size.int, (self.past[0], first.seq_dim))
            self.context = graph.call_function(operator.add, (self.past_len, self.rows))
        else:
            self.past_len, self.context = 0, self.rows
        presents: list[fx.Node] = [None] * len(self.roles.cuts)
        logits = None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = self.ids
            elif node.op == "get_attr":
                self.env[node] = graph.node_copy(node, lambda n: self.env[n])
            elif node.op == "output":
                logits = self._first_output(node)
            elif self._is_sequence_length(node):
                self.env[node] = self.context  # public sizes are the context's
            else:
                self.env[node] = self._copy(node)
            if node in self.cut_index:
                index = self.cut_index[node]
                seq_dim = self.roles.cuts[index].seq_dim
                if self.with_past:
                    self.env[node] = graph.call_function(aten.cat.default, ([self.past[index], self.env[node]], seq_dim))
                presents[index] = self.env[node]
        graph.output((logits, *presents))
        program = fx.GraphModule(self.gm, graph, class_name="AeroGenerationProgram")
        program.graph.eliminate_dead_code(is_impure_node=lambda n: n.is_impure(impure_random=False))
        program.recompile()
        if META_KEY in self.gm.meta:
            program.meta[META_KEY] = self.gm.meta[META_KEY]
        # which outputs are the cache, and their position dims: engines mask each cached row once
        # (``secrecy.cache_factors``), and the analyzer prices it so
        program.meta[CACHE_DIMS_KEY] = [cut.seq_dim for cut in self.roles.cuts]
        return program

    # -- nodes -------------------------------------------------------------------------------------------

    def _is_sequence_length(self, node: fx.Node) -> bool:
        return self.roles.is_length(node)

    def _first_output(self, node: fx.Node) -> fx.Node:
        out = node.args[0]
        while isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, dict):
            out = next(iter(out.values()))
        if not isinstance(out, fx.Node):
            raise AeroError("cannot derive a decode step: the graph's first output is not the logits tensor")
        return self.env[out]

    def _copy(self, node: fx.Node) -> fx.Node:
        roles = self.roles
        if roles.levels.get(node) is None or roles.levels[node] < 2 or node.op != "call_function":
            new = self.graph.node_copy(node, lambda n: self.env[n])  # public or owner: whole context
            return new
        in_tail = node in roles.tail
        out_roles = roles.dims(node)
        rows = 1 if in_tail else self.rows
        args = list(node.args)
        if takes_size_list(node):
            args[1] = [self._size(size, out_roles[i] if i < len(out_roles) else None, rows, node)
                       for i, size in enumerate(args[1])]
        elif takes_dim_range(node):
            source_roles = roles.dims(args[0]) if isinstance(args[0], fx.Node) else []
            dim = args[1] if isinstance(args[1], int) else None
            role = source_roles[dim] if dim is not None and -len(source_roles) <= dim < len(source_roles) else None
            args[2:] = [self._size(a, role, rows, node) for a in args[2:]]
        mapped = [self._map_arg(a, node, out_roles, in_tail) for a in args]
        kwargs = {k: self._map_arg(v, node, out_roles, in_tail) for k, v in node.kwargs.items()}
        new = self.graph.create_node(node.op, node.target, tuple(mapped), kwargs, name=node.name)
        new.meta = dict(node.meta)
        return new

    def _size(self, size, role, rows, node: fx.Node):
        """A size argument of a per-position node: the new rows' count or the context's."""
        if isinstance(size, fx.Node) and self._is_sequence_length(size):
            if role == Q:
                return _Resolved(rows)
            if role == K:
                return _Resolved(self.context)
            raise AeroError(f"cannot derive a decode step: '{node.name}' ({target_name(node)}) uses the sequence "
                            "length where no position dim of its result says whether it means the new tokens or the context")
        return size

    def _map_arg(self, arg, node: fx.Node, out_roles: list, in_tail: bool):
        if isinstance(arg, _Resolved):
            return arg.value
        if isinstance(arg, (list, tuple)):
            return type(arg)(self._map_arg(a, node, out_roles, in_tail) for a in arg)
        if not isinstance(arg, fx.Node):
            return arg
        if self._is_sequence_length(arg):
            raise AeroError(f"cannot derive a decode step: '{node.name}' ({target_name(node)}) takes the sequence "
                            "length as an argument whose meaning (new tokens or context) is not known")
        mapped = self.env[arg]
        arg_roles = self.roles.dims(arg)
        if not arg_roles:
            return mapped
        if in_tail and arg not in self.roles.tail and self.roles.levels.get(arg) == 2:
            # the tail's frontier: a per-position value enters what runs for the last position only
            rows = [d for d, role in enumerate(arg_roles) if role == Q]
            if len(rows) != 1:
                raise AeroError(f"cannot derive a decode step: '{arg.name}' enters the part after the last attention "
                                f"with {len(rows)} query-position dims where one is expected")
            return self._last_rows(mapped, rows[0], self.rows, 1, True)
        for dim, out_dim in self._aligned(node, arg, len(arg_roles), len(out_roles)):
            if arg_roles[dim] == K and out_roles[out_dim] == Q:
                mapped = self._last_rows(mapped, dim, self.context, 1 if in_tail else self.rows, in_tail)
        return mapped

    def _aligned(self, node: fx.Node, arg: fx.Node, arg_rank: int, out_rank: int):
        """(arg dim, output dim) pairs that index the same positions: right-aligned broadcasting, or a
        matrix product's rows (first operand) and columns (second operand)."""
        if classify_node(self.gm, node) in (OpKind.MATMUL, OpKind.LINEAR) and node.args and arg_rank >= 2:
            batch = arg_rank - 2
            pairs = [(arg_rank - 2, out_rank - 2)] if arg is node.args[0] else [(arg_rank - 1, out_rank - 1)]
            return pairs + [(d, out_rank - arg_rank + d) for d in range(batch) if out_rank - arg_rank + d >= 0]
        if arg_rank > out_rank:
            return []  # a reduction or a flattening: no broadcasting to line up
        return [(d, out_rank - arg_rank + d) for d in range(arg_rank)]

    def _last_rows(self, value: fx.Node, dim: int, length, rows, tail: bool) -> fx.Node:
        """``value`` cut to its last ``rows`` entries along ``dim`` (of ``length``)."""
        if not self.with_past and not tail:
            return value  # prefill before the tail: every position is new
        key = (value, dim, rows if isinstance(rows, int) else id(rows))
        if key not in self.slices:
            start = self.graph.call_function(operator.sub, (length, rows))
            self.slices[key] = self.graph.call_function(aten.slice.Tensor, (value, dim, start, length))
        return self.slices[key]


@dataclass(frozen=True)
class _Resolved:
    """A size already mapped into the new graph (not looked up again)."""

    value: object


def depends_on_step_values(node: fx.Node, secrecy: dict) -> bool:
    """Whether an owner value reads a public value computed for one program's step (a position row, a mask's
    size): an engine shares such a value per step, and one of the weights alone once per session."""
    pending, seen = [node], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "call_function" and secrecy.get(current) is Secrecy.PUBLIC:
            return True
        pending.extend(current.all_input_nodes)
    return False
