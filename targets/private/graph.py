"""A graph as private engines see it: which nodes run under MPC, and the plaintext values of the rest.

    split = SecretGraph(gm)                       # secrecy (aero_compile.secrecy), token views, output
    plain = split.plain_values(batch=1, seq_len=8)  # public and owner values, computed in the clear
    owned, inverses = owner_shares(gm, split.secrecy, plain)

The client's secret is its token ids; the lowering never reads them as numbers: every consumer is an
embedding (run as one_hot(ids) @ table) or a view of the ids (a view of the one-hot, vocabulary last).
Public values (masks, rotary tables, shapes) are computed by both parties; owner values (weights and
what is computed from weights alone) by the owner, then secret-shared where a secret op reads them.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.fx as fx

from aero_compile.capturing import first_output
from aero_compile.errors import AeroError
from aero_compile.ops import OpKind, attr_value, classify_node, is_plain_view, target_name
from aero_compile.secrecy import Secrecy, owner_divisor, propagate_secrecy
from aero_compile.shapes import propagate_shapes

# Consumers of input_ids the lowering can serve without revealing them: its shape, the embedding
# (as a one-hot matmul), metadata checks, and views of the ids (HF GPT-2 views them as [-1, T]),
# which become views of the one-hot with the vocabulary as an extra last dimension (``is_plain_view``:
# the view ops every consumer, engines and the CrypTen ONNX file, turns into one-hot views).
_INPUT_CONSUMERS = frozenset({OpKind.CONSTANT, OpKind.EMBEDDING, OpKind.NOOP})


def token_views(gm: fx.GraphModule, ids: fx.Node, check_reader: Callable[[fx.Node, OpKind, set], None]) -> list[fx.Node]:
    """The views of the token ids ``ids`` (views of views too), parents first; every other node that
    reads them goes to ``check_reader(node, kind, tokens)``, which raises if the caller cannot serve it.

    The one walk every consumer of the ids shares (the engines here, the CrypTen ONNX file): a view of
    the ids becomes the same view of their one-hot, with the vocabulary as an extra last dimension.
    """
    views, pending, tokens = [], [ids], {ids}
    while pending:
        for user in pending.pop().users:
            kind = classify_node(gm, user)
            if kind is OpKind.RESHAPE and is_plain_view(user) and user.args[0] in tokens:
                tokens.add(user)
                pending.append(user)
                views.append(user)
            else:
                check_reader(user, kind, tokens)
    return views


def token_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """The token-id input and the views of it; AeroError naming a node that reads the ids otherwise."""
    first = next(n for n in gm.graph.nodes if n.op == "placeholder")

    def check_reader(user: fx.Node, kind: OpKind, tokens: set) -> None:
        if kind not in _INPUT_CONSUMERS:
            raise AeroError(f"node '{user.name}' ({target_name(user)}) reads the token ids directly; "
                            "private execution supports only embedding lookups of input_ids")

    return {first, *token_views(gm, first, check_reader)}


def owner_shares(gm: fx.GraphModule, secrecy: dict[fx.Node, Secrecy],
                 plain: dict[fx.Node, torch.Tensor]) -> tuple[dict[fx.Node, torch.Tensor], dict[fx.Node, torch.Tensor]]:
    """What the owner secret-shares at setup, in plaintext: every owner value a secret op reads, and
    1/w for every division x / w by an owner value (inverted in the clear: see ``secrecy.owner_divisor``)."""
    values = {node: plain[node] for node, level in secrecy.items()
              if level is Secrecy.OWNER and any(secrecy.get(user) is Secrecy.SECRET for user in node.users)}
    inverses = {}
    for node in gm.graph.nodes:
        if secrecy.get(node) is Secrecy.SECRET and classify_node(gm, node) is OpKind.DIV:
            divisor = owner_divisor(node, secrecy)
            if divisor is not None:
                inverses[node] = torch.reciprocal(plain[divisor].float())
    return values, inverses


def output_node(gm: fx.GraphModule) -> fx.Node:
    """The node of the graph's first output (the logits); training-only outputs come after it."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = first_output(output.args[0])
    if not isinstance(result, fx.Node):
        raise AeroError("the graph's first output is not a tensor; nothing to run privately")
    return result


class SecretGraph:
    """One graph split by the secrecy rule: the nodes to run under MPC and how to compute the others."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.secrecy = propagate_secrecy(gm)
        self.input = next(n for n in gm.graph.nodes if n.op == "placeholder")
        self.token_nodes = token_nodes(gm)
        self.output = output_node(gm)
        if self.secrecy.get(self.output) is not Secrecy.SECRET:
            raise AeroError("the graph's first output does not depend on the input; nothing to run privately")

    def is_secret(self, node: fx.Node) -> bool:
        return self.secrecy.get(node) is Secrecy.SECRET

    def plain_values(self, batch: int, seq_len: int, shapes: dict | None = None) -> dict[fx.Node, object]:
        """Every public and owner node's value, in plaintext (the ids are zeros: only their shape is public).

        A party that is not the owner holds zeroed weights, so its owner values are placeholders of the
        right shape; only the owner's are real, and only the owner shares them. ``shapes``: the graph's
        ``propagate_shapes`` at (batch, seq_len), if the caller has it already.
        """
        plain: dict[fx.Node, object] = {self.input: torch.zeros(batch, seq_len, dtype=torch.long)}
        shapes = shapes or propagate_shapes(self.gm, seq_len=seq_len, batch=batch)

        def plain_or_shape(node: fx.Node):
            # A public node can read a secret one only for its shape (``sym_size(scores, 2)``).
            if node in plain:
                return plain[node]
            return torch.zeros(shapes[node].shape, dtype=shapes[node].dtype)

        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "output") or self.is_secret(node):
                continue
            if node.op == "get_attr":
                plain[node] = attr_value(self.gm, node).detach()
            elif node.op == "call_module":
                plain[node] = None  # export's input guard: metadata only
            else:
                args = fx.node.map_arg(node.args, plain_or_shape)
                kwargs = fx.node.map_arg(node.kwargs, plain_or_shape)
                with torch.no_grad():
                    if node.op == "call_method":
                        plain[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
                    else:
                        plain[node] = node.target(*args, **kwargs)
        return plain

    def vocabulary_size(self, plain: dict[fx.Node, object]) -> int:
        """Rows of the token embedding table (the one-hot's width)."""
        for user in (user for token in self.token_nodes for user in token.users):
            if classify_node(self.gm, user) is OpKind.EMBEDDING:
                return int(plain[user.args[0]].shape[0])
        raise AeroError("the graph has no embedding of input_ids to share one-hot")


def check_token_ids(input_ids: torch.Tensor | None, batch: int, seq_len: int, vocab: int) -> None:
    """The client's ids: the agreed shape, inside the vocabulary (AeroError otherwise)."""
    if input_ids is None or tuple(input_ids.shape) != (batch, seq_len):
        raise AeroError(f"the client needs token ids of shape ({batch}, {seq_len})")
    if int(input_ids.max()) >= vocab or int(input_ids.min()) < 0:
        raise AeroError(f"token ids must lie in [0, {vocab})")
