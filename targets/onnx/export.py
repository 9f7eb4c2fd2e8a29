"""Turn a rewritten GraphModule into an ONNX program: ``input_ids [batch, sequence] -> logits``.

Export goes through ``torch.export`` (non-strict, batch and sequence dims left to ``Dim.AUTO``) and
then ``torch.onnx.export(dynamo=True)`` on the ExportedProgram; the TorchScript exporter is not used
because it silently fixes the shapes of export-derived graphs. Training-only outputs (the entropies of
the ``entropy-hooks`` pass) are stripped first with that pass's own ``strip_entropy_outputs``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from aero_compile.capture import EXAMPLE_BATCH, EXAMPLE_SEQ, example_input, export_program, quiet_export
from aero_compile.errors import AeroError, describe
from aero_compile.graph_info import graph_info

INPUT_NAME, OUTPUT_NAME = "input_ids", "logits"
AXIS_NAMES = ("batch", "sequence")  # names of the dynamic input axes in the ONNX file


@dataclass
class OnnxExport:
    """An exported program, the logits-only graph it came from, and what stripping removed."""

    program: "torch.onnx.ONNXProgram"
    graph_module: fx.GraphModule  # the graph the ONNX model computes: compare onnxruntime against this
    stripped_outputs: int  # training-only outputs removed before export


def export_onnx(gm: fx.GraphModule) -> OnnxExport:
    """Export ``gm`` to ONNX in memory; raises a one-line AeroError naming the op or construct on failure."""
    logits_graph, stripped = logits_only(gm)
    example = example_input(logits_graph, seq_len=EXAMPLE_SEQ, batch=EXAMPLE_BATCH)
    with quiet_export():
        try:
            exported = export_program(logits_graph, example)
        except Exception as exc:
            raise AeroError(f"cannot export to ONNX: torch.export failed: {describe_export_error(exc)}") from None
        try:
            program = torch.onnx.export(exported, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], verbose=False, optimize=True)
        except Exception as exc:
            raise AeroError(f"cannot export to ONNX: {describe_export_error(exc)}") from None
    _name_dynamic_axes(program)
    return OnnxExport(program=program, graph_module=logits_graph, stripped_outputs=stripped)


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
