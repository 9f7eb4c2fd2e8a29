"""Capture any decoder as one torch.fx.GraphModule: input_ids [B, T] -> logits [B, T, V].

Non-strict ``torch.export`` with dynamic batch and sequence dims, unwrapped with ``.module()``; a
hand-written module that export rejects falls back to ``torch.fx.symbolic_trace``. Either way the
passes see aten-level nodes (linear, layer_norm, gelu and softmax are still single nodes): we never
run ``run_decompositions()``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import AeroError, describe
from .graph_info import graph_info, set_graph_info
from .loader import load_model
from .ops import OpKind, attr_value, classify_node

EXAMPLE_BATCH, EXAMPLE_SEQ = 2, 8  # above 1 so export does not specialize the dims
DYNAMIC_DIMS = ({0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO},)  # input_ids' batch and sequence


def capture(model, *, name: str | None = None) -> fx.GraphModule:
    """The model as a GraphModule; ``model`` is anything ``load_model`` takes (a name, a path, a module)."""
    if not isinstance(model, (nn.Module, torch.export.ExportedProgram)):
        name = name or str(model)
        model = load_model(model)
    if isinstance(model, torch.export.ExportedProgram):
        gm = plain_graph_module(model.module())
    elif isinstance(model, fx.GraphModule):
        gm = plain_graph_module(model)
    else:
        gm = _export_module(model)
    known = graph_info(gm)  # a GraphModule captured before keeps what was known about it
    set_graph_info(gm, model=name or known.model or type(model).__name__,
                   vocab_size=known.vocab_size or vocab_size(gm, model),
                   max_seq_len=known.max_seq_len or _max_seq_len(model))
    return gm


@contextlib.contextmanager
def quiet_export():
    """Silence torch.export / torch.onnx chatter for one export: missing torchvision ops, symbolic-shape
    notes, and the partial graph torch.export prints to stderr when it fails (our error is one line)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.fx.experimental.symbolic_shapes",
                                                    "torch._export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_program(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """Non-strict ``torch.export`` of ``module`` on ``example`` ids, batch and sequence dims left dynamic.

    The one export every backend shares (capture, .pt2, ONNX); quiet, without autograd.
    """
    with torch.no_grad(), quiet_export():
        return torch.export.export(module, (example,), dynamic_shapes=DYNAMIC_DIMS, strict=False)


def _export_module(model: nn.Module) -> fx.GraphModule:
    model = model.eval()
    example = torch.zeros(EXAMPLE_BATCH, EXAMPLE_SEQ, dtype=torch.long)
    try:
        return plain_graph_module(export_program(model, example).module())
    except Exception as export_error:  # export raises many types; the fallback decides
        try:
            with quiet_export():
                traced = torch.fx.symbolic_trace(model)
                traced(example)  # a trace that cannot run is no capture
            return traced
        except Exception:
            # the first line of an export error names the op or Python construct
            raise AeroError(f"cannot capture the model: torch.export failed with {describe(export_error)}") from None


def plain_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A plain GraphModule over ``gm``'s graph (drops export's input-shape hooks, keeps pytree I/O).

    Export also leaves a ``_guards_fn`` call that re-checks the shape assumptions made while tracing
    the example input; some are spurious (a GPT-2 whose causal mask is sliced to T gets the guard
    T != block_size), so the call is dropped: the graph is checked by running it instead.
    """
    plain = fx.GraphModule(gm, gm.graph, class_name="AeroGraphModule")
    for node in list(plain.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards") and not node.users:
            plain.graph.erase_node(node)
    plain.recompile()
    plain.meta.update(getattr(gm, "meta", {}) or {})
    return plain


def clone_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A structural copy: a new graph, the same parameter tensors (passes never write tensors in place)."""
    graph = copy.deepcopy(gm.graph)
    clone = fx.GraphModule(gm, graph, class_name="AeroGraphModule")
    clone.meta.update(gm.meta)
    return clone


def remove_dead_code(gm: fx.GraphModule) -> None:
    """Erase unused nodes, and the weights and buffers no node reads any more.

    Dropout counts as pure here: fx keeps random ops alive by default, which would keep a pruned FFN
    (and its eval-mode dropout) in the graph. Unread tensors go too (the two FFN matrices fold-linear
    merged, removed norms' gains): otherwise .pt2 files carry them and training optimizes them.
    """
    gm.graph.eliminate_dead_code(is_impure_node=lambda node: node.is_impure(impure_random=False))
    read = {str(node.target) for node in gm.graph.nodes if node.op == "get_attr"}
    tensors = list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False))
    for name, _ in tensors:
        if name not in read:
            owner_path, _, attr = name.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            if hasattr(owner, attr):
                delattr(owner, attr)
    gm.recompile()


def deep_copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A full copy, tensors included: what a caller gets back can be trained without touching ``gm``."""
    clone = copy.deepcopy(gm)
    clone.meta.update(copy.deepcopy(gm.meta))
    return clone


def vocab_size(gm: fx.GraphModule, model=None) -> int:
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "vocab_size", None):
        return int(config.vocab_size)
    for node in gm.graph.nodes:  # the first embedding table that the input indexes
        if node.op != "get_attr" and classify_node(gm, node) is OpKind.EMBEDDING:
            weight = node.args[0]
            if isinstance(weight, fx.Node) and weight.op == "get_attr":
                return int(attr_value(gm, weight).shape[0])
    return 2  # unknown: ids 0/1 are valid for any vocabulary


def _max_seq_len(model) -> int | None:
    config = getattr(model, "config", None)
    for attr in ("block_size", "n_positions", "max_position_embeddings"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    return None


def example_input(gm: fx.GraphModule, seq_len: int = 16, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Deterministic token ids valid for the model's vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    vocab = graph_info(gm).vocab_size or 2
    return torch.randint(0, vocab, (batch, seq_len), generator=generator)


def run_graph(gm: fx.GraphModule, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of one forward pass (the first output where a graph returns several)."""
    with torch.no_grad():
        out = gm(input_ids)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out
