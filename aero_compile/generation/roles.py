"""Which dims of a captured decoder are positions, and which of them stay whole in decode.

Export leaves every node's symbolic shape in ``node.meta["val"]``; the sequence length is one symbol
(the input ids' dim 1). In a decode step there are two lengths: the *query* length Q (the new tokens)
and the *context* length K (cached positions plus the new ones). A dim that is the sequence symbol gets
a role:

* public values (positions, masks, rotary tables, the passes' visibility patterns) are computed at
  the full context: every sequence dim is K;
* the keys and values the attention products read (from the cached point on) run over the context: K;
* any other secret value is per new position: Q, except a scores-like value (two sequence dims: the
  queries and the keys) whose last sequence dim is K.

The attention products are found from shapes and secrecy alone: a MATMUL-kind node whose second
operand is secret and has the sequence symbol in its last two dims contracts over, or produces, key
positions (scores = q @ k^T, mix = p @ v, linearized heads' pattern @ v).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch
import torch.fx as fx

from ..errors import AeroError, describe
from ..ops import OpKind, classify_node, layer_of, module_stack
from ..secrecy import Secrecy, propagate_secrecy

Q, K = "Q", "K"


@dataclass
class KeyCut:
    """One cached tensor: the node whose rows are kept between steps, and its sequence dim."""

    node: fx.Node
    seq_dim: int
    layer: int | None


@dataclass
class DecoderRoles:
    """The analysis ``derive`` builds programs from."""

    input_node: fx.Node
    seq_symbol: sympy.Symbol
    values: dict[fx.Node, object]  # each node's value at a symbolic [batch, sequence] (fake tensors)
    levels: dict[fx.Node, Secrecy]
    attention_products: list[fx.Node]
    cuts: list[KeyCut]
    key_chain: set[fx.Node]  # after a cut, up to the attention product's operand: keys over the context
    tail: set[fx.Node]  # secret nodes after the last attention product: computed for the last position only

    def dims(self, node: fx.Node) -> list[str | None]:
        """The role of each dim of ``node`` (None: not a sequence dim)."""
        shape = self.shape(node)
        if shape is None:
            return []
        seq = [i for i, size in enumerate(shape) if self.is_seq(size)]
        roles: list[str | None] = [None] * len(shape)
        if self.levels.get(node, Secrecy.PUBLIC) is not Secrecy.SECRET or node in self.key_chain:
            for i in seq:
                roles[i] = K
            return roles
        for i in seq:
            roles[i] = Q
        if len(seq) >= 2:
            roles[seq[-1]] = K
        return roles

    def shape(self, node: fx.Node) -> tuple | None:
        value = self.values.get(node)
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None

    def is_length(self, node: fx.Node) -> bool:
        """A size node whose value is the sequence length."""
        return self.is_seq(self.values.get(node))

    def is_seq(self, size) -> bool:
        expr = getattr(getattr(size, "node", None), "expr", None)
        return expr is not None and expr == self.seq_symbol


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[fx.Node, object] = {}

    def run_node(self, node: fx.Node):
        result = super().run_node(node)
        self.values[node] = result
        return result


def symbolic_values(gm: fx.GraphModule) -> dict[fx.Node, object]:
    """Every node's value on fake input ids of symbolic [batch, sequence] shape.

    Recomputed rather than read from ``node.meta["val"]``: passes copy a neighbour's metadata onto the
    nodes they insert, so a stored shape can be another node's.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    example = torch.zeros(2, 8, dtype=torch.long)  # above 1 so neither dim specializes
    ids = mode.from_tensor(example, symbolic_context=StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * 2))
    recorder = _Recorder(gm)
    try:
        with mode, torch.no_grad():
            recorder.run(ids)
    except Exception as exc:
        raise AeroError(f"cannot derive a decode step: the graph does not run on a symbolic sequence length "
                        f"({describe(exc, 160)})") from None
    return recorder.values


def analyze_decoder(gm: fx.GraphModule) -> DecoderRoles:
    """Roles, cached tensors and the per-last-position tail of ``gm``; refuses in one line what it cannot map."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise AeroError(f"cannot derive a decode step: the graph takes {len(inputs)} inputs, not input_ids alone")
    input_node = inputs[0]
    values = symbolic_values(gm)
    symbol = values[input_node].shape[1].node.expr
    levels = propagate_secrecy(gm)
    roles = DecoderRoles(input_node, symbol, values, levels, [], [], set(), set())
    for node in gm.graph.nodes:
        if node.op != "call_function" or classify_node(gm, node) is not OpKind.MATMUL or len(node.args) < 2:
            continue
        second = node.args[1]
        if not isinstance(second, fx.Node) or levels.get(second) is not Secrecy.SECRET:
            continue
        second_shape = roles.shape(second)
        if second_shape and any(roles.is_seq(s) for s in second_shape[-2:]):
            roles.attention_products.append(node)
    if not roles.attention_products:
        raise AeroError("cannot derive a decode step: no attention product (secret keys or values over positions) "
                        "found in the graph; generation needs an attention decoder")
    _find_cuts(gm, roles)
    _find_tail(gm, roles)
    return roles


def _find_cuts(gm: fx.GraphModule, roles: DecoderRoles) -> None:
    """Walk back from each product's key/value operand through views with one consumer: cache there."""
    cut_nodes: dict[fx.Node, KeyCut] = {}
    for product in roles.attention_products:
        node = product.args[1]
        chain = []
        while True:
            kind = classify_node(gm, node)
            parent = _single_tensor_input(roles, node)
            if (kind not in (OpKind.RESHAPE, OpKind.NOOP) or parent is None or len(_consumers(parent)) != 1
                    or roles.levels.get(parent) is not Secrecy.SECRET or not _seq_dims(roles, parent)):
                break
            chain.append(node)
            node = parent
        seq = _seq_dims(roles, node)
        if len(seq) != 1:
            raise AeroError(f"cannot derive a decode step: the attention operand '{node.name}' has {len(seq)} "
                            "sequence dims where a cache needs exactly one")
        roles.key_chain.update(chain)
        if node not in cut_nodes:
            layer = _layer(node)
            cut_nodes[node] = KeyCut(node, seq[0], layer)
    roles.cuts = list(cut_nodes.values())


def _find_tail(gm: fx.GraphModule, roles: DecoderRoles) -> None:
    """Secret nodes no attention product depends on: what follows the last attention, per position."""
    needed: set[fx.Node] = set()
    stack = list(roles.attention_products) + [c.node for c in roles.cuts]
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        stack.extend(node.all_input_nodes)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node not in needed and roles.levels.get(node) is Secrecy.SECRET:
            roles.tail.add(node)


def _consumers(node: fx.Node) -> list[fx.Node]:
    # export's metadata asserts read a value and feed nothing: they are no consumers
    return [u for u in node.users if u.users or u.op == "output" or "assert" not in str(u.target)]


def _single_tensor_input(roles: DecoderRoles, node: fx.Node) -> fx.Node | None:
    tensors = [a for a in node.all_input_nodes if isinstance(roles.values.get(a), (torch.Tensor, list, tuple))]
    return tensors[0] if len(tensors) == 1 else None


def _seq_dims(roles: DecoderRoles, node: fx.Node) -> list[int]:
    return [i for i, s in enumerate(roles.shape(node) or ()) if roles.is_seq(s)]


def _layer(node: fx.Node) -> int | None:
    stack = module_stack(node)
    return layer_of(stack[-1][1]) if stack else None
