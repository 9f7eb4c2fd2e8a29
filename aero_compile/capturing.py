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
import re
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
    """The model as a GraphModule; ``model`` is anything ``load_model`` takes (a name, a path, a module).

    Refused in one line, before any pass runs: a graph that only runs at the example's length (a
    recurrent scan unrolled by export: state-space models), and a model whose earlier logits depend on
    later tokens (not a causal decoder: a masked LM).
    """
    if not isinstance(model, (nn.Module, torch.export.ExportedProgram)):
        name = name or str(model)
        model = load_model(model)
    program = None
    if isinstance(model, torch.export.ExportedProgram):
        program = model
        gm = plain_graph_module(model.module())
    elif isinstance(model, fx.GraphModule):
        gm = plain_graph_module(model)
    else:
        gm, program = _export_module(model)
    known = graph_info(gm)  # a GraphModule captured before keeps what was known about it
    bounds = [b for b in (known.max_seq_len, config_context(model), program_context(program),
                          position_table_rows(gm)) if b]
    set_graph_info(gm, model=name or known.model or type(model).__name__,
                   vocab_size=known.vocab_size or vocab_size(gm, model),
                   max_seq_len=min(bounds) if bounds else None)
    check_causal_decoder(gm, architecture(model, name))
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


def export_program(module: nn.Module, example: torch.Tensor, max_seq_len: int | None = None) -> torch.export.ExportedProgram:
    """Non-strict ``torch.export`` of ``module`` on ``example`` ids, batch and sequence dims left dynamic.

    The one export every backend shares (capture, .pt2, ONNX); quiet, without autograd. ``max_seq_len``
    is recorded in the program's range constraints (a .pt2 then states its context itself).
    """
    dims = DYNAMIC_DIMS
    if max_seq_len and max_seq_len >= example.shape[1]:
        dims = ({0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO(max=int(max_seq_len))},)
    with torch.no_grad(), quiet_export():
        return torch.export.export(module, (example,), dynamic_shapes=dims, strict=False)


def _export_module(model: nn.Module) -> tuple[fx.GraphModule, torch.export.ExportedProgram | None]:
    model = model.eval()
    example = torch.zeros(EXAMPLE_BATCH, EXAMPLE_SEQ, dtype=torch.long)
    try:
        program = export_program(model, example)
        return plain_graph_module(program.module()), program
    except Exception as export_error:  # export raises many types; the fallback decides
        try:
            with quiet_export():
                traced = torch.fx.symbolic_trace(model)
                traced(example)  # a trace that cannot run is no capture
            return traced, None
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


# Config fields that state a model's context, as families name them (n_positions, n_ctx, block_size,
# seq_length, max_seq_len, max_sequence_length, max_position_embeddings, ...). Not ``max_length``:
# in Hugging Face configs that is a generation default, not a property of the model.
_CONTEXT_FIELD = re.compile(r"^(max_(seq|sequence|position|pos|context|ctx|source|target|text)\w*|n_positions|n_ctx|"
                            r"block_size|seq_length|seq_len|context_length|context_size|max_len)$")


def config_context(model) -> int | None:
    """The smallest context length the model's config states, under any of the names families use."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "to_dict"):
        values = dict(config.to_dict())
        for alias, field in (getattr(config, "attribute_map", None) or {}).items():
            values.setdefault(alias, getattr(config, field, None))
    elif hasattr(config, "__dataclass_fields__"):
        values = {name: getattr(config, name) for name in config.__dataclass_fields__}
    else:
        values = dict(vars(config))
    text = values.get("text_config")  # a composite model's language part states it there
    items = list(values.items()) + (list(text.items()) if isinstance(text, dict) else [])
    found = [int(value) for key, value in items
             if _CONTEXT_FIELD.match(str(key)) and isinstance(value, int) and not isinstance(value, bool) and value > 0]
    return min(found) if found else None


def program_context(program: torch.export.ExportedProgram | None) -> int | None:
    """The largest sequence length an exported program accepts: its range constraint on input_ids' dim 1
    (or that dim itself, when it was exported static)."""
    if program is None:
        return None
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            return None
        length = value.shape[1]
        if isinstance(length, int):
            return length
        bound = program.range_constraints.get(length.node.expr)
        upper = getattr(bound, "upper", None)
        try:
            return int(upper) if upper is not None and upper.is_finite else None
        except (TypeError, AttributeError):
            return None
    return None


def position_table_rows(gm: fx.GraphModule) -> int | None:
    """Rows of a learned position table: an embedding weight indexed by public positions (not the tokens)."""
    from .secrecy import Secrecy, propagate_secrecy

    levels = None
    rows = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or classify_node(gm, node) is not OpKind.EMBEDDING or len(node.args) < 2:
            continue
        weight, indices = node.args[0], node.args[1]
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr" and isinstance(indices, fx.Node)):
            continue
        levels = levels if levels is not None else propagate_secrecy(gm)
        if levels.get(indices) is Secrecy.PUBLIC:
            rows.append(int(attr_value(gm, weight).shape[0]))
    return min(rows) if rows else None


def architecture(model, name: str | None = None) -> str:
    """How an error names the model: "'mamba' (MambaForCausalLM)", or its class, or the name it was loaded by."""
    inner = getattr(model, "model", model)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    cls = type(inner).__name__
    if model_type:
        return f"'{model_type}' ({cls})"
    if isinstance(model, (torch.export.ExportedProgram, fx.GraphModule)):
        return f"'{name}'" if name else "the model"
    return f"'{name}' ({cls})" if name else cls


CAUSALITY_CHECK_LEN = 6  # not the export example's length: a graph specialized to that length is caught too


def check_causal_decoder(gm: fx.GraphModule, what: str = "the model") -> None:
    """Refuse a graph that is no causal decoder, in one line: run it on two sequences that differ only in
    their last token; every earlier position's logits must agree."""
    info = graph_info(gm)
    length = min(CAUSALITY_CHECK_LEN, info.max_seq_len or CAUSALITY_CHECK_LEN)
    vocab = info.vocab_size or 2
    if length < 2 or vocab < 2:
        return
    ids = example_input(gm, seq_len=length, batch=1, seed=3)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % vocab
    try:
        with quiet_export():
            logits = run_graph(gm, torch.cat([ids, changed]))
    except Exception as exc:
        raise AeroError(f"unsupported architecture {what}: its captured graph does not run on {length} tokens "
                        f"({describe(exc, 160)}); export specialized it to the {EXAMPLE_SEQ}-token example (a "
                        "recurrent or state-space layer?). aero-compile compiles attention decoders") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2 or tuple(logits.shape[:2]) != (2, length):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise AeroError(f"unsupported model {what}: it maps input_ids [2, {length}] to {shape}, "
                        f"not to logits [batch, sequence, vocabulary]")
    earlier = logits[:, :-1].float()
    diff = (earlier[0] - earlier[1]).abs().max().item()
    scale = earlier.abs().max().item()
    if not diff <= 1e-5 + 1e-4 * scale:
        raise AeroError(f"{what} is not a causal decoder: changing the last token changes the logits at earlier "
                        f"positions (max |diff| {diff:.3g}); a bidirectional model (a masked LM?) cannot be compiled "
                        "as a decoder")


def example_input(gm: fx.GraphModule, seq_len: int = 16, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Deterministic token ids valid for the model's vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    vocab = graph_info(gm).vocab_size or 2
    return torch.randint(0, vocab, (batch, seq_len), generator=generator)


def first_output(outputs):
    """The logits among a graph's outputs (values or output nodes): the first; training-only ones come after."""
    while isinstance(outputs, (tuple, list)):
        outputs = outputs[0]
    if isinstance(outputs, dict):
        outputs = next(iter(outputs.values()))
    return outputs


def run_graph(gm: fx.GraphModule, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of one forward pass (the first output where a graph returns several)."""
    with torch.no_grad():
        return first_output(gm(input_ids))
