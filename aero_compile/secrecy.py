"""Who knows each value: PUBLIC (shapes, constants, buffers), OWNER (parameters only), SECRET.

Under two-party private inference the client's tokens are secret, the model owner holds the weights.
A value computed from shapes, constants and buffers (causal masks, rotary tables) is public: both
parties compute it locally. A value computed from parameters alone (``reciprocal(alpha)`` of
scale-ffn, a folded weight) is computed by the owner in the clear before the protocol starts, so it
costs nothing; it only costs when it meets a secret activation (dividing by it costs one product: the
owner shares its inverse, see ``owner_divisor``). Everything downstream of the tokens is secret.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import torch.fx as fx

from .ops import OpKind, classify_node, target_name


class Secrecy(IntEnum):
    """Ordered so that the secrecy of a result is the max over its inputs."""

    PUBLIC = 0
    OWNER = 1
    SECRET = 2


def propagate_secrecy(gm: fx.GraphModule) -> dict[fx.Node, Secrecy]:
    """Secrecy of every node, in one pass over the graph (inputs are the client's secret tokens)."""
    parameter_names = {name for name, _ in gm.named_parameters(remove_duplicate=False)}
    levels: dict[fx.Node, Secrecy] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            levels[node] = Secrecy.SECRET
        elif node.op == "get_attr":
            levels[node] = Secrecy.OWNER if str(node.target) in parameter_names else Secrecy.PUBLIC
        elif node.op == "output":
            continue
        elif classify_node(gm, node) is OpKind.CONSTANT:
            levels[node] = Secrecy.PUBLIC  # arange/ones/sym_size: built from shapes alone
        else:
            inputs = [levels.get(arg, Secrecy.PUBLIC) for arg in node.all_input_nodes]
            levels[node] = max(inputs, default=Secrecy.PUBLIC)
    return levels


def owner_divisor(node: fx.Node, levels: dict[fx.Node, Secrecy]) -> fx.Node | None:
    """The divisor w of a tensor division ``x / w`` (a DIV-kind node) when only the model owner knows w.

    The owner inverts w in the clear and shares 1/w at setup, so the division costs one product: the
    cost analyzer prices it so and the private engines lower it so.
    """
    if target_name(node) == "reciprocal" or len(node.args) < 2:
        return None
    divisor = node.args[1]
    return divisor if isinstance(divisor, fx.Node) and levels.get(divisor) is Secrecy.OWNER else None


# Products whose owner-side factor is a model weight: fixed across queries, so an engine may mask it
# once per model (see targets/crypten/weight_masks.py) and open only the activation side per query.
FIXED_WEIGHT_PRODUCTS = frozenset({OpKind.LINEAR, OpKind.MATMUL, OpKind.EMBEDDING})
WEIGHT_MASK_MODES = ("per-model", "per-query")  # masked once per model (the default), or per product as before


def fixed_weights(node: fx.Node, kind: OpKind, levels: dict[fx.Node, Secrecy], metas) -> list[fx.Node]:
    """The weights a secret product reads: matrices (>= 2 dims) only the model owner knows.

    Owner values do not depend on the client's tokens, so they are the same for every query of a model;
    a bias (1 dim) is added locally and needs no mask. ``kind``: the node's OpKind (``ops.classify_node``);
    ``metas``: node -> TensorMeta (``shapes.py``). Empty unless ``node`` is a secret linear, matmul or
    embedding with a secret factor.
    """
    if levels.get(node) is not Secrecy.SECRET or kind not in FIXED_WEIGHT_PRODUCTS:
        return []
    inputs = node.all_input_nodes
    if not any(levels.get(arg) is Secrecy.SECRET for arg in inputs):
        return []
    return [arg for arg in dict.fromkeys(inputs)
            if levels.get(arg) is Secrecy.OWNER and arg in metas and len(metas[arg].shape) >= 2]


# -- the K/V cache of a generation program: each cached row masked once ------------------------------------

# GraphModule.meta key of a prefill or decode-step program (``generation.programs``): per cached tensor
# (the outputs after the logits, in order), its position dim. Absent on any other graph.
CACHE_DIMS_KEY = "aero_cache_dims"

# Ops that move a cached tensor's entries without changing them: a product reads the cache through them.
_RELAYOUTS = frozenset({"view", "_unsafe_view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze",
                        "transpose", "t", "permute", "expand", "clone", "contiguous", "alias", "detach",
                        "slice", "narrow", "index_select"})  # the last three: of another dim (heads), or whole


@dataclass(frozen=True)
class CacheFactor:
    """A factor of a secret product that is the K/V cache, relaid out: its rows along ``dim`` are positions.

    Rows ``[0, past_rows)`` were masked by an earlier program of the same generation (0 in the prefill);
    the rest, up to ``rows``, are this program's new positions.
    """

    index: int  # which argument of the product (0: left, 1: right)
    dim: int  # the factor's position dim (non-negative)
    past_rows: int
    rows: int

    @property
    def new_fraction(self) -> float:
        return (self.rows - self.past_rows) / max(self.rows, 1)


def cache_factors(gm: fx.GraphModule, levels: dict[fx.Node, Secrecy], metas) -> dict[fx.Node, CacheFactor]:
    """Secret x secret matrix products of a generation program whose one factor is the K/V cache.

    Such a factor's rows are positions that every later step reads again, unchanged: an engine masks each
    row once, when it first appears, and every later product reuses that opening (the cache's rows are to
    the steps what a weight is to the queries; see targets/crypten/cache_masks.py). Found from the program's
    cached outputs (``CACHE_DIMS_KEY``) forward through ops that only relay out entries (views, transposes,
    expands: ``_RELAYOUTS``) to a product operand, following the position dim. ``metas``: node -> TensorMeta.
    Empty for a graph that is not a generation program.
    """
    dims = gm.meta.get(CACHE_DIMS_KEY)
    output = next((n for n in gm.graph.nodes if n.op == "output"), None)
    if not dims or output is None or not isinstance(output.args[0], (tuple, list)):
        return {}
    found: dict[fx.Node, CacheFactor] = {}
    for present, dim in zip(output.args[0][1:], dims):
        if not isinstance(present, fx.Node) or present not in metas:
            continue
        past = _past_rows(present, dim, metas)
        for product, index, factor_dim in _products_reading(gm, present, dim, metas):
            other = product.args[1 - index]
            if (levels.get(product) is not Secrecy.SECRET or not isinstance(other, fx.Node)
                    or levels.get(other) is not Secrecy.SECRET or other is product.args[index]):
                continue
            found[product] = CacheFactor(index, factor_dim, past, int(metas[product.args[index]].shape[factor_dim]))
    return found


def _past_rows(present: fx.Node, dim: int, metas) -> int:
    """Rows of a decode step's cached tensor that came in as the past (cat(past, new) along ``dim``)."""
    if target_name(present) not in ("cat", "concat") or not present.args or not present.args[0]:
        return 0
    past = present.args[0][0]
    return int(metas[past].shape[dim]) if isinstance(past, fx.Node) and past.op == "placeholder" else 0


def _products_reading(gm: fx.GraphModule, start: fx.Node, dim: int, metas):
    """(product, argument index, position dim there) for each matmul reading ``start`` through relayouts."""
    pending = [(start, dim)]
    while pending:
        node, position = pending.pop()
        for user in node.users:
            if user.op != "call_function" or user not in metas:
                continue
            if classify_node(gm, user) is OpKind.MATMUL and len(user.args) >= 2 and node in user.args[:2]:
                if user.args[0] is not user.args[1]:
                    yield user, user.args.index(node), position
                continue
            if user.args and user.args[0] is node and target_name(user) in _RELAYOUTS:
                moved = _moved_dim(user, position, metas[node].shape, metas[user].shape)
                if moved is not None:
                    pending.append((user, moved))


def _moved_dim(node: fx.Node, dim: int, before: tuple, after: tuple) -> int | None:
    """Where dim ``dim`` of a relayout's input lands in its output (None: it is split, merged or resized)."""
    name, rank_in, rank_out = target_name(node), len(before), len(after)
    if name in ("transpose", "t"):
        a, b = (node.args[1] % rank_in, node.args[2] % rank_in) if name == "transpose" else (0, 1)
        moved = b if dim == a else a if dim == b else dim
    elif name == "permute":
        order = [d % rank_in for d in (node.args[1] if len(node.args) == 2 else node.args[1:])]
        moved = order.index(dim)
    elif name == "unsqueeze":
        inserted = node.args[1] % rank_out
        moved = dim + 1 if inserted <= dim else dim
    elif name in ("expand", "clone", "contiguous", "alias", "detach"):
        moved = dim + rank_out - rank_in  # expand may add leading dims
    elif name in ("slice", "narrow", "index_select"):
        cut = node.args[1] % rank_in if len(node.args) > 1 and isinstance(node.args[1], int) else 0
        whole = name == "slice" and (len(node.args) < 3 or node.args[2] in (None, 0))
        moved = dim if cut != dim or whole else None  # positions kept in order: a whole slice (export's x[:, None])
    else:  # a view: the dim survives where the entries before it span the same count
        before_count = math.prod(before[:dim])
        moved = next((j for j in range(rank_out) if math.prod(after[:j]) == before_count
                      and after[j] == before[dim]), None)
    if moved is None or not 0 <= moved < rank_out or after[moved] != before[dim]:
        return None
    return moved
