"""The graph a CrypTen ONNX file computes: one-hot tokens in, public values folded, fixed shapes.

``export_for_crypten(gm, seq_len=T)`` is the entry point (``save_onnx(..., target="crypten")``): this
module's fx half, then ``rewrite`` on the exported ONNX, then the opset and metadata.

CrypTen's ``crypten.nn.from_onnx`` turns every initializer into a trainable, encrypted parameter and
every ``Constant`` node into a public constant, and cannot index by encrypted token ids. So, at the
fx level, before export (``aero_compile.secrecy`` decides who knows what, as for the CrypTen engine):

* ``input_ids`` becomes ``one_hot`` [batch, sequence, vocab] (float): each token embedding
  ``embedding(table, ids)`` becomes ``one_hot @ table``; any other use of the ids values is refused;
* every PUBLIC value a secret or owner op reads (causal masks, positions, rotary tables, shapes) is
  computed now, at the file's fixed [batch, sequence], and stored as a buffer (later a ``Constant``),
  with mask values clamped into the range CrypTen's exp computes (``protocols.safe_public_constant``);
* every OWNER value computed from weights alone (``1/alpha``, the position rows ``wpe[:T]``) is
  computed by the owner now and stored as a weight; views of weights stay ops (free on shares);
* the weights become graph inputs, so the exporter's optimizer folds public values only (it would
  fold ``transpose(weight)`` into an anonymous constant otherwise); ``rewrite`` turns
  them back into initializers named as in the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils import _pytree as pytree

from aero_compile.capturing import clone_graph_module, example_input, quiet_export, remove_dead_code
from aero_compile.errors import AeroError
from aero_compile.graph_info import graph_info
from aero_compile.ops import OpKind, attr_value, classify_node, target_name
from aero_compile.secrecy import Secrecy, propagate_secrecy
from aero_compile.targets.onnx.export import OnnxExport, describe_export_error, finish_model, logits_only
from aero_compile.targets.onnx.opset import check_opset, export_opset
from aero_compile.targets.private.graph import token_views

from ..protocols import safe_public_constant
from .check import crypten_import
from .rewrite import lower_for_crypten

ONE_HOT_NAME = "one_hot"
DEFAULT_OPSET = 17  # what CrypTen's own exporter writes (crypten.nn.onnx_converter._OPSET_VERSION)
DEFAULT_SEQ_LEN = 128  # the CLI's --seq-len default
# Views of a weight stay in the graph: CrypTen runs them on the owner's shares for free, and folding
# them would store a second copy (a tied embedding's transpose).
_WEIGHT_VIEWS = frozenset({"t", "transpose", "permute", "view", "reshape", "_unsafe_view", "unsqueeze", "squeeze",
                           "expand", "contiguous", "clone", "alias"})


@dataclass
class CryptenGraph:
    """A module ``(one_hot, *weights) -> logits`` at fixed shapes, and what it was made from."""

    module: fx.GraphModule
    weight_names: list[str]  # the model's names of the weight inputs, in input order
    weights: list[torch.Tensor]
    batch: int
    seq_len: int
    vocab: int
    source: fx.GraphModule  # the logits-only graph taking input_ids: compare against this
    stripped_outputs: int


def crypten_graph(gm: fx.GraphModule, *, batch: int, seq_len: int) -> CryptenGraph:
    """Build the one-hot, folded, fixed-shape module; a one-line AeroError says what cannot be."""
    source, stripped = logits_only(gm)
    info = graph_info(source)
    info.check_seq_len(seq_len, "--onnx-seq-len")
    g = clone_graph_module(source)
    ids = next(node for node in g.graph.nodes if node.op == "placeholder")
    values = _record_values(g, example_input(g, seq_len=seq_len, batch=batch))
    secrecy = propagate_secrecy(g)
    vocab = _vocabulary(g, ids, values)
    one_hot = _one_hot_input(g, ids, values, vocab)
    _fold(g, secrecy, values)
    remove_dead_code(g)
    weights = _weights_as_inputs(g, one_hot)
    g.graph.set_codegen(fx.graph.CodeGen())  # plain positional inputs, not export's pytree of one input
    output = next(node for node in reversed(g.graph.nodes) if node.op == "output")
    output.args = (pytree.tree_leaves(output.args[0])[0],)  # logits_only checked there is one
    remove_dead_code(g)  # the weights, now inputs, leave the module
    g.graph.lint()
    return CryptenGraph(module=g, weight_names=[name for name, _ in weights], weights=[w for _, w in weights],
                        batch=batch, seq_len=seq_len, vocab=vocab, source=source, stripped_outputs=stripped)


def export_for_crypten(gm, *, seq_len: int | None = None, batch: int = 1, opset: int | None = None,
                       default_seq_len: int = DEFAULT_SEQ_LEN):
    """Export ``gm`` as a CrypTen-readable file at [batch, seq_len] (an ``OnnxExport``; nothing written).

    Without ``seq_len``, the file takes ``default_seq_len`` tokens, or the model's context if shorter.
    """
    opset = check_opset(opset) if opset is not None else DEFAULT_OPSET
    if seq_len is None:
        seq_len = min(default_seq_len, graph_info(gm).max_seq_len or default_seq_len)
    if seq_len < 1 or batch < 1:
        raise AeroError(f"a CrypTen ONNX file needs a positive batch and sequence length, got [{batch}, {seq_len}]")
    graph = crypten_graph(gm, batch=batch, seq_len=seq_len)
    program = export_crypten_graph(graph, export_opset(opset))
    weights = {name: w.float().numpy() for name, w in zip(graph.weight_names, graph.weights)}
    proto = lower_for_crypten(program.model_proto, weights, ONE_HOT_NAME)
    metadata = {"aero_compile.target": "crypten", "aero_compile.input": f"{ONE_HOT_NAME} float [{batch}, {seq_len}, "
                f"{graph.vocab}]: one_hot(input_ids, {graph.vocab})", "aero_compile.seq_len": str(seq_len),
                "aero_compile.batch": str(batch)}
    finish_model(program, opset, metadata=metadata, proto=proto)
    return OnnxExport(program=program, graph_module=graph.source, stripped_outputs=graph.stripped_outputs,
                      target="crypten", check_shapes=((batch, seq_len),), one_hot_vocab=graph.vocab,
                      extra_checks={"crypten_import": crypten_import})


def export_crypten_graph(graph: CryptenGraph, opset: int):
    """``torch.onnx.export`` of the module at its fixed shapes; returns the ONNXProgram."""
    example = (torch.zeros(graph.batch, graph.seq_len, graph.vocab), *graph.weights)
    with quiet_export():
        try:
            program = torch.export.export(graph.module, example, strict=False)
        except Exception as exc:
            raise AeroError(f"cannot export to ONNX for CrypTen: torch.export failed: {describe_export_error(exc)}") from None
        try:
            return torch.onnx.export(program, example, dynamo=True, opset_version=opset, verbose=False, optimize=True,
                                     input_names=[ONE_HOT_NAME, *graph.weight_names], output_names=["logits"])
        except Exception as exc:
            raise AeroError(f"cannot export to ONNX for CrypTen: {describe_export_error(exc)}") from None


def _record_values(g: fx.GraphModule, input_ids: torch.Tensor) -> dict[fx.Node, object]:
    """Every node's value on ``input_ids`` (public ones depend on the shape only)."""
    values: dict[fx.Node, object] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            values[node] = result = super().run_node(node)
            return result

    with torch.no_grad():
        Recorder(g).run(input_ids)
    return values


def _vocabulary(g: fx.GraphModule, ids: fx.Node, values) -> int:
    for node in _token_users(g, ids):
        if classify_node(g, node) is OpKind.EMBEDDING:
            return int(values[node.args[0]].shape[0])
    raise AeroError("cannot export to ONNX for CrypTen: the graph has no embedding of input_ids to feed one-hot")


def _token_users(g: fx.GraphModule, ids: fx.Node) -> list[fx.Node]:
    """The nodes that read the ids' values: views of them (parents first), then embeddings; anything else is refused."""
    embeddings = []

    def check_reader(user: fx.Node, kind: OpKind, tokens: set) -> None:
        if kind is OpKind.EMBEDDING and user.args[1] in tokens and user.args[0] not in tokens:
            embeddings.append(user)
        elif kind is not OpKind.CONSTANT:  # sym_size and friends read the shape only
            raise AeroError(f"cannot export to ONNX for CrypTen: node '{user.name}' ({target_name(user)}) reads "
                            "the token ids; a CrypTen file takes one-hot tokens, which only embedding lookups can read")

    return [*token_views(g, ids, check_reader), *embeddings]


def _one_hot_input(g: fx.GraphModule, ids: fx.Node, values, vocab: int) -> fx.Node:
    """Replace the ids by a one-hot placeholder: views gain a last vocab dim, embeddings become matmuls."""
    with g.graph.inserting_before(ids):
        one_hot = g.graph.placeholder(ONE_HOT_NAME)
    replaced = {ids: one_hot}
    for node in _token_users(g, ids):
        source = replaced[node.args[0] if classify_node(g, node) is OpKind.RESHAPE else node.args[1]]
        with g.graph.inserting_before(node):
            if classify_node(g, node) is OpKind.RESHAPE:
                shape = [*values[node].shape, vocab]
                new = g.graph.call_function(torch.ops.aten.reshape.default, (source, shape))
                replaced[node] = new
            else:
                new = g.graph.call_function(torch.ops.aten.matmul.default, (source, node.args[0]))
                node.replace_all_uses_with(new)
    for node in reversed([n for n in replaced if n is not ids]):
        if not node.users:
            g.graph.erase_node(node)
    # shape queries of the ids (sym_size) now read the one-hot, whose first two dims are the same
    ids.replace_all_uses_with(one_hot)
    g.graph.erase_node(ids)
    return one_hot


def _fold(g: fx.GraphModule, secrecy: dict[fx.Node, Secrecy], values) -> None:
    """Store public values (and owner values other than weight views) that secret ops read."""
    parameters = {name for name, _ in g.named_parameters(remove_duplicate=False)}
    for index, node in enumerate(list(g.graph.nodes)):
        level = secrecy.get(node)
        if node.op in ("placeholder", "output") or node not in values or level is None:
            continue
        readers = [user for user in node.users if user.op == "output" or secrecy.get(user, Secrecy.SECRET) > level]
        if not readers or level is Secrecy.SECRET:
            if level is Secrecy.SECRET:  # literal mask values inside secret ops (masked_fill(s, m, -1e4))
                node.args = tuple(safe_public_constant(a) if isinstance(a, float) else a for a in node.args)
            continue
        value = values[node]
        if level is Secrecy.OWNER and (node.op == "get_attr" or target_name(node) in _WEIGHT_VIEWS):
            continue
        if level is Secrecy.PUBLIC and node.op == "get_attr" and str(node.target) in parameters:
            continue
        if isinstance(value, torch.Tensor):
            name = f"aero_{'owner' if level is Secrecy.OWNER else 'public'}_{index}"
            value = value.detach().clone()
            if level is Secrecy.OWNER:
                g.register_parameter(name, nn.Parameter(value, requires_grad=False))
            else:
                g.register_buffer(name, safe_public_constant(value))
            with g.graph.inserting_before(node):
                node.replace_all_uses_with(g.graph.get_attr(name))
        elif isinstance(value, (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool, list, tuple)):
            literal = _literal(value)
            for user in list(node.users):
                user.args = fx.node.map_arg(user.args, lambda a: literal if a is node else a)
                user.kwargs = fx.node.map_arg(user.kwargs, lambda a: literal if a is node else a)
        else:
            raise AeroError(f"cannot export to ONNX for CrypTen: node '{node.name}' ({target_name(node)}) computes a "
                            f"{type(value).__name__}, which cannot be stored as a constant")


def _literal(value):
    if isinstance(value, (list, tuple)):
        return type(value)(_literal(v) for v in value)
    if isinstance(value, torch.SymInt):
        return int(value)
    if isinstance(value, torch.SymFloat):
        return float(value)
    return value


def _weights_as_inputs(g: fx.GraphModule, one_hot: fx.Node) -> list[tuple[str, torch.Tensor]]:
    """Every weight read becomes a placeholder after ``one_hot``; returns (model name, tensor) in order."""
    parameters = dict(g.named_parameters(remove_duplicate=False))
    weights, placeholders = [], {}
    anchor = one_hot
    for node in list(g.graph.nodes):
        if node.op != "get_attr" or str(node.target) not in parameters or not node.users:
            continue
        name = str(node.target)
        if name not in placeholders:
            with g.graph.inserting_after(anchor):
                placeholders[name] = anchor = g.graph.placeholder(re.sub(r"\W", "_", name))
            weights.append((name, attr_value(g, node).detach()))
        node.replace_all_uses_with(placeholders[name])
        g.graph.erase_node(node)
    return weights
