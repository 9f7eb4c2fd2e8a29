"""Which ONNX opset a file is written in: ``--onnx-opset N`` for N in [13, 23], default 20.

``torch.onnx.export(dynamo=True)`` writes opset 18 and above only (asked for less, it writes 18, or
a file that fails ``onnx.checker``), and ``onnx.version_converter`` has no adapter down from Split-18
or Shape-15. So for N < 18 the file is exported at 18 and the few operators whose *signature* changed
since opset 13 are rewritten here (everything else changed only in the types it accepts):

========================  =============================================================
Split-18 (num_outputs)    Split-13 with the sizes as an input (axis length must be static)
Reduce*-18 (axes input)   Reduce*-13 with the axes as an attribute (ReduceSum keeps its input)
Shape-15 (start, end)     Shape-13 then Slice (below 15)
Reshape-14 (allowzero=1)  no flag, unless a constant shape holds a literal 0 (refused below 14):
                          a computed shape holds 0 only for an empty input (onnx2torch rejects the flag)
Cast-19/21 (saturate)     dropped when it is the default
LayerNormalization-17     its arithmetic (below 17)
========================  =============================================================

Then every node is checked against the operator schema of the target opset (an operator that does
not exist there, or an attribute it does not know, is a one-line error naming both) before
``onnx.checker`` and onnxruntime run as for any file.
"""

from __future__ import annotations

import numpy as np

from aero_compile.errors import AeroError

MIN_OPSET = 13  # Squeeze/Unsqueeze/ReduceSum take axes as inputs, Softmax is per-axis: what the rewrites emit
EXPORT_FLOOR = 18  # the lowest opset torch.onnx.export(dynamo=True) writes correctly
DEFAULT_OPSET = 20


def max_opset() -> int:
    """The highest opset the installed exporter writes (23 with torch 2.13)."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        return 23


def check_opset(opset: int | None) -> int:
    """``opset`` (or the default) if it is in the supported range; a one-line AeroError otherwise."""
    if opset is None:
        return DEFAULT_OPSET
    if not MIN_OPSET <= opset <= max_opset():
        raise AeroError(f"--onnx-opset {opset} is outside the range this exporter writes and onnxruntime checks: "
                        f"{MIN_OPSET} to {max_opset()} (default {DEFAULT_OPSET})")
    return opset


def export_opset(opset: int) -> int:
    """The opset to ask torch.onnx.export for (the target, or 18 when the file is lowered afterwards)."""
    return max(opset, EXPORT_FLOOR)


def lower_opset(model, opset: int):
    """``model`` (an ``onnx.ModelProto`` at opset >= 18) rewritten for ``opset``; returns a new model."""
    import onnx

    current = default_opset(model)
    if current == opset:
        return model
    if current < opset:
        raise AeroError(f"internal: cannot raise an opset {current} model to {opset}")
    if model.functions or any(a.HasField("g") or a.graphs for n in model.graph.node for a in n.attribute):
        raise AeroError(f"cannot write opset {opset}: the model has functions or subgraphs, which are only "
                        f"written at opset {EXPORT_FLOOR} and above")
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    rewriter = _Lowering(lowered, opset)
    nodes = []
    for node in lowered.graph.node:
        nodes.extend(rewriter.lower(node))
    del lowered.graph.node[:]
    lowered.graph.node.extend(nodes)
    for entry in lowered.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    check_schemas(lowered, opset)
    return lowered


def default_opset(model) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def check_schemas(model, opset: int) -> None:
    """Every default-domain node must exist at ``opset`` with the attributes it carries."""
    import onnx

    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            first = onnx.defs.get_schema(node.op_type, onnx.defs.onnx_opset_version(), "").since_version
            raise AeroError(f"cannot write opset {opset}: the operator {node.op_type} (node '{node.name}') first "
                            f"appears in opset {first}; use --onnx-opset {first} or above") from None
        unknown = [a.name for a in node.attribute if a.name not in schema.attributes]
        if unknown:
            raise AeroError(f"cannot write opset {opset}: {node.op_type} (node '{node.name}') uses the attribute "
                            f"'{unknown[0]}', which {node.op_type}-{schema.since_version} does not have")


_REDUCE_AXES_INPUT_SINCE_18 = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                                         "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})


class _Lowering:
    """Per-node rewrites; constants (initializers, Constant nodes) and static shapes come from the model."""

    def __init__(self, model, opset: int):
        import onnx
        from onnx import numpy_helper

        self.opset = opset
        self.constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        inferred = onnx.shape_inference.infer_shapes(model)
        self.shapes = {}
        for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            dims = value.type.tensor_type.shape.dim
            self.shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        self.counter = 0

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}_lowered_{self.counter}"

    def constant(self, base: str, value) -> tuple[str, object]:
        from onnx import helper, numpy_helper

        name = self.fresh(base)
        self.constants[name] = value = np.asarray(value)
        return name, helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))

    def lower(self, node) -> list:
        op, opset = node.op_type, self.opset
        if op == "Split" and any(a.name == "num_outputs" for a in node.attribute):
            return self._split(node)
        if op in _REDUCE_AXES_INPUT_SINCE_18 and opset < 18:
            return self._reduce(node)
        if op == "Shape" and opset < 15 and node.attribute:
            return self._shape(node)
        if op == "Reshape" and any(a.name == "allowzero" for a in node.attribute):
            shape = self.constants.get(node.input[1])
            if not _attribute(node, "allowzero", 0) or shape is None or not (np.asarray(shape) == 0).any():
                return [_without(node, "allowzero")]  # no literal 0: the flag changes nothing
            if opset < 14:
                raise AeroError(f"cannot write opset {opset}: Reshape (node '{node.name}') keeps a literal 0 in its shape "
                                "(allowzero), which Reshape-13 reads as 'copy this dim'; use --onnx-opset 14 or above")
        if op == "Cast" and opset < 19 and _attribute(node, "saturate", 1) == 1:  # the default; float8 only
            return [_without(node, "saturate")]
        if op == "LayerNormalization" and opset < 17:
            return self._layer_norm(node)
        return [node]

    def _split(self, node) -> list:
        from onnx import helper

        axis = _attribute(node, "axis", 0)
        shape = self.shapes.get(node.input[0])
        length = shape[axis] if shape and -len(shape) <= axis < len(shape) else None
        if length is None:
            raise AeroError(f"cannot write opset {self.opset}: Split (node '{node.name}') splits an axis whose length "
                            "is not fixed in the graph; use --onnx-opset 18 or above")
        parts = len(node.output)
        size = -(-length // parts)
        sizes = [size] * (parts - 1) + [length - size * (parts - 1)]
        name, constant = self.constant(node.name or "split", np.array(sizes, dtype=np.int64))
        return [constant, helper.make_node("Split", [node.input[0], name], list(node.output), name=node.name, axis=axis)]

    def _reduce(self, node) -> list:
        from onnx import helper

        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        noop = attributes.pop("noop_with_empty_axes", 0)
        axes = None
        if len(node.input) > 1 and node.input[1]:
            if node.input[1] not in self.constants:
                raise AeroError(f"cannot write opset {self.opset}: {node.op_type} (node '{node.name}') takes its axes "
                                "from a computed tensor; use --onnx-opset 18 or above")
            axes = [int(a) for a in np.asarray(self.constants[node.input[1]]).reshape(-1)]
        if not axes and noop:
            return [helper.make_node("Identity", [node.input[0]], list(node.output), name=node.name)]
        if axes:
            attributes["axes"] = axes
        return [helper.make_node(node.op_type, [node.input[0]], list(node.output), name=node.name, **attributes)]

    def _shape(self, node) -> list:
        from onnx import helper

        attributes = {a.name: a.i for a in node.attribute}
        full = self.fresh(node.output[0])
        nodes = [helper.make_node("Shape", [node.input[0]], [full], name=node.name)]
        start, end = attributes.get("start", 0), attributes.get("end", np.iinfo(np.int64).max)
        names = []
        for label, value in (("starts", start), ("ends", end), ("axes", 0)):
            name, constant = self.constant(label, np.array([value], dtype=np.int64))
            nodes.append(constant)
            names.append(name)
        nodes.append(helper.make_node("Slice", [full, *names], list(node.output), name=self.fresh(node.name or "shape")))
        return nodes

    def _layer_norm(self, node) -> list:
        """(x - mean) / sqrt(var + eps) * scale + bias over the axes from ``axis`` on."""
        from onnx import helper

        if len([o for o in node.output if o]) > 1:
            raise AeroError(f"cannot write opset {self.opset}: LayerNormalization (node '{node.name}') exposes its "
                            "mean or deviation; use --onnx-opset 17 or above")
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = self.shapes.get(node.input[0])
        if shape is None:
            raise AeroError(f"cannot write opset {self.opset}: the rank of LayerNormalization's input (node "
                            f"'{node.name}') is unknown; use --onnx-opset 17 or above")
        axis = attributes.get("axis", -1) % len(shape)
        axes = list(range(axis, len(shape)))
        x, name = node.input[0], node.name or "layer_norm"
        mean, centered, squared, variance = (self.fresh(f"{name}_{s}") for s in ("mean", "centered", "squared", "variance"))
        shifted, deviation, normalized = (self.fresh(f"{name}_{s}") for s in ("shifted", "deviation", "normalized"))
        eps_name, eps = self.constant("epsilon", np.array(attributes.get("epsilon", 1e-5), dtype=np.float32))
        reduce = {"axes": axes, "keepdims": 1}
        nodes = [
            helper.make_node("ReduceMean", [x], [mean], **reduce),
            helper.make_node("Sub", [x, mean], [centered]),
            helper.make_node("Mul", [centered, centered], [squared]),
            helper.make_node("ReduceMean", [squared], [variance], **reduce),
            eps,
            helper.make_node("Add", [variance, eps_name], [shifted]),
            helper.make_node("Sqrt", [shifted], [deviation]),
        ]
        scaled = node.output[0] if len(node.input) < 3 or not node.input[2] else self.fresh(f"{name}_scaled")
        nodes.append(helper.make_node("Div", [centered, deviation], [normalized]))
        nodes.append(helper.make_node("Mul", [normalized, node.input[1]], [scaled]))
        if scaled != node.output[0]:
            nodes.append(helper.make_node("Add", [scaled, node.input[2]], [node.output[0]]))
        return nodes


def _attribute(node, name: str, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _without(node, attribute: str):
    import onnx

    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    kept = [a for a in copy.attribute if a.name != attribute]
    del copy.attribute[:]
    copy.attribute.extend(kept)
    return copy
