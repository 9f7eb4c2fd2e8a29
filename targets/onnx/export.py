"""Turn a rewritten GraphModule into an ONNX program: ``input_ids [batch, sequence] -> logits``.

Export goes through ``torch.export`` (non-strict, batch and sequence dims left to ``Dim.AUTO``) and
then ``torch.onnx.export(dynamo=True)`` on the ExportedProgram; the TorchScript exporter is not used
because it silently fixes the shapes of export-derived graphs. Training-only outputs (the entropies of
the ``entropy-hooks`` pass) are stripped first with that pass's own ``strip_entropy_outputs``. The
file states the model's context (``context.py``) and is written at the asked opset (``opset.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from aero_compile.capturing import EXAMPLE_BATCH, EXAMPLE_SEQ, example_input, export_program, quiet_export
from aero_compile.errors import AeroError, describe
from aero_compile.graph_info import graph_info

INPUT_NAME, OUTPUT_NAME = "input_ids", "logits"
AXIS_NAMES = ("batch", "sequence")  # names of the dynamic input axes in the ONNX file


TARGETS = ("onnxruntime", "crypten")  # --onnx-for: who reads the file


@dataclass
class OnnxExport:
    """An exported program, the logits-only graph it came from, and what stripping removed."""

    program: "torch.onnx.ONNXProgram"
    graph_module: fx.GraphModule  # the graph the ONNX model computes: compare onnxruntime against this
    stripped_outputs: int  # training-only outputs removed before export
    target: str = "onnxruntime"
    check_shapes: tuple | None = None  # [batch, sequence] shapes to verify at (None: verify.CHECK_SHAPES)
    one_hot_vocab: int | None = None  # the file takes one_hot(input_ids, vocab) instead of the ids
    # Checks the file's reader adds: report key -> check(exported, path, (batch, sequence)) -> entry
    extra_checks: dict = field(default_factory=dict)

    def feeds(self, input_ids: torch.Tensor) -> dict:
        """The onnxruntime inputs for ``input_ids``."""
        if self.one_hot_vocab:
            return {"one_hot": torch.nn.functional.one_hot(input_ids, self.one_hot_vocab).float().numpy()}
        return {INPUT_NAME: input_ids.numpy()}


def export_onnx(gm: fx.GraphModule, *, opset: int | None = None) -> OnnxExport:
    """Export ``gm`` to ONNX in memory; raises a one-line AeroError naming the op or construct on failure."""
    from .opset import check_opset, export_opset

    opset = check_opset(opset)
    logits_graph, stripped = logits_only(gm)
    example = example_input(logits_graph, seq_len=EXAMPLE_SEQ, batch=EXAMPLE_BATCH)
    with quiet_export():
        try:
            exported = export_program(logits_graph, example)
        except Exception as exc:
            raise AeroError(f"cannot export to ONNX: torch.export failed: {describe_export_error(exc)}") from None
        try:
            program = torch.onnx.export(exported, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], verbose=False, optimize=True,
                                        opset_version=export_opset(opset))
        except Exception as exc:
            raise AeroError(f"cannot export to ONNX: {describe_export_error(exc)}") from None
    _name_dynamic_axes(program)
    finish_model(program, opset, max_seq_len=graph_info(logits_graph).max_seq_len)
    return OnnxExport(program=program, graph_module=logits_graph, stripped_outputs=stripped)


def finish_model(program, opset: int, *, max_seq_len: int | None = None, metadata: dict | None = None, proto=None) -> None:
    """State the context bound and metadata, lower to ``opset``; ``program.model`` is replaced."""
    import onnx_ir

    from .context import bound_sequence
    from .opset import lower_opset

    proto = proto if proto is not None else program.model_proto
    if max_seq_len:
        bound_sequence(proto, max_seq_len)
    if metadata:
        from onnx import helper

        helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **metadata})
    program.model = onnx_ir.from_proto(lower_opset(proto, opset))


def logits_only(gm: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """``gm`` without training-only outputs, and how many it had; any other extra output is an error."""
    from aero_compile.passes.entropy_hooks import strip_entropy_outputs

    stripped = len(graph_info(gm).entropy_outputs)
    clean = strip_entropy_outputs(gm)
    output = next(node for node in reversed(clean.graph.nodes) if node.op == "output")
    leaves = [leaf for leaf in pytree.tree_leaves(output.args[0]) if isinstance(leaf, fx.Node)]
    if len(leaves) != 1:
        raise AeroError(f"cannot export to ONNX: the graph returns {len(leaves)} tensors, expected the logits alone "
                        "(only entropy-hooks outputs are stripped automatically)")
    placeholders = [node for node in clean.graph.nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        raise AeroError(f"cannot export to ONNX: the graph takes {len(placeholders)} inputs, expected input_ids alone")
    return clean, stripped


def _name_dynamic_axes(program) -> None:
    """Call the input's symbolic dims batch/sequence; a dim that export fixed to a number is an error."""
    dims = program.model.graph.inputs[0].shape
    symbolic = {}
    for axis, name in enumerate(AXIS_NAMES):
        dim = dims[axis]
        if isinstance(dim, int):
            raise AeroError(f"cannot export to ONNX: the {name} axis became the constant {dim}; "
                            "something in the graph specializes on it")
        symbolic[dim] = name
    program.rename_axes(symbolic)


def describe_export_error(exc: BaseException) -> str:
    """One line for an exporter error: the failing node and op where the exporter says, else its first line.

    torch.onnx wraps the real cause (e.g. ``DispatchError: No ONNX function found for <OpOverload ...>``)
    in a ConversionError whose own message is several paragraphs of advice; we walk the cause chain.
    """
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    text = "\n".join(str(e) for e in chain)
    node = re.search(r"Error when translating node %(\S+) .*?target=([^\]\(]+)", text)
    missing = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if missing:
        where = f" (node '{node.group(1)}')" if node else ""
        return f"no ONNX translation for the op '{missing.group(1)}'{where}"
    if node:
        return f"node '{node.group(1)}' ({node.group(2).strip()}): {describe(chain[-1])}"
    # torch.export errors name the Python construct on the line after this marker.
    construct = re.search(r"The following call raised this error:\n.*\n\s*(.+)", text)
    deepest = describe(chain[-1])
    return f"{deepest} (at `{construct.group(1).strip()}`)" if construct else deepest
