"""The model's context bound, stated in the ONNX file: metadata, and a check node onnxruntime reports.

ONNX types have no bound on a symbolic axis, so a too-long input used to fail deep inside the graph
(a broadcast error at the causal mask, or a Gather past the position table). The file now says:

* metadata ``aero_compile.max_seq_len`` (``onnx.load(f).metadata_props``, or in onnxruntime
  ``session.get_modelmeta().custom_metadata_map``), and the input's doc string;
* a check before anything reads the ids: ``input_ids + zeros[1, :sequence]`` where ``zeros`` has
  max_seq_len columns. Up to the bound it adds 0; past it the broadcast fails, and onnxruntime's
  message names the node, ``sequence_longer_than_context_<N>``, e.g.
  ``Non-zero status code returned while running Add node. Name:'sequence_longer_than_context_256'
  ... Attempting to broadcast an axis by a dimension other than 1. 256 by 300``.
"""

from __future__ import annotations

METADATA_KEY = "aero_compile.max_seq_len"
CHECK_NODE = "sequence_longer_than_context_{}"


def bound_sequence(model, max_seq_len: int) -> None:
    """Add the metadata and the check to ``model`` (an ``onnx.ModelProto`` taking ``input_ids``), in place."""
    from onnx import TensorProto, helper

    graph = model.graph
    ids = graph.input[0].name
    checked = f"{ids}_within_context"
    names = {key: f"context_{key}" for key in ("shape", "zeros", "length", "start", "axis", "window")}
    check = [
        helper.make_node("Constant", [], [names["shape"]], value=helper.make_tensor(
            names["shape"], TensorProto.INT64, [2], [1, max_seq_len])),
        helper.make_node("ConstantOfShape", [names["shape"]], [names["zeros"]],
                         value=helper.make_tensor("zero", TensorProto.INT64, [1], [0])),
        helper.make_node("Shape", [ids], [names["length"]], start=1, end=2),
        helper.make_node("Constant", [], [names["start"]], value=helper.make_tensor(names["start"], TensorProto.INT64, [1], [0])),
        helper.make_node("Constant", [], [names["axis"]], value=helper.make_tensor(names["axis"], TensorProto.INT64, [1], [1])),
        helper.make_node("Slice", [names["zeros"], names["start"], names["length"], names["axis"]], [names["window"]]),
        helper.make_node("Add", [ids, names["window"]], [checked], name=CHECK_NODE.format(max_seq_len)),
    ]
    for node in graph.node:  # every reader of the ids (shape queries too) waits for the check
        for index, name in enumerate(node.input):
            if name == ids:
                node.input[index] = checked
    nodes = check + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, METADATA_KEY: str(max_seq_len)})
    graph.input[0].doc_string = (f"token ids [batch, sequence], sequence <= {max_seq_len} (the model's context; longer "
                                 f"inputs fail at node '{CHECK_NODE.format(max_seq_len)}')")


def context_bound(model) -> int | None:
    """The bound a file states (None for files without one)."""
    value = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    return int(value) if value else None
