"""``--onnx-for crypten``: a file that CrypTen 0.4.1's ``crypten.nn.from_onnx`` imports and runs as shipped.

    aero-compile gpt2-tiny --passes all --emit onnx --onnx-for crypten -o m.onnx
    # any party: model = crypten.nn.from_onnx(open("m.onnx", "rb")).encrypt(src=OWNER)
    #            logits = model(crypten.cryptensor(one_hot, src=CLIENT))   # one_hot: [batch, sequence, vocab]

What CrypTen's converter needs, and how the file gives it (``graph`` does the fx half):

* one input, ``one_hot`` float [batch, sequence, vocab] at the fixed shape of ``--onnx-seq-len`` /
  ``--onnx-batch`` (token ids cannot index under encryption; a one-hot product is the embedding);
* initializers are the model owner's weights only (CrypTen encrypts them, and makes each one a
  trainable parameter, which integer tensors cannot be); every public value (shapes, the causal mask,
  positions, scales) is a ``Constant`` node, already computed: no Shape, Range, Not, Cast, Equal ...;
* masks are finite and in exp's accurate range (-64, not -1e4 or -inf);
* only operators CrypTen has a module for, in the forms its modules read: Split becomes Slices,
  Squeeze/Unsqueeze/Flatten become Reshapes to the static shape, Neg a product by -1, Reciprocal a
  power -1, a reduction over the last axis a product with a public column, a Where on a public
  condition its arithmetic; a public operand of Add/Mul/Sub/Div/MatMul goes second (CrypTen calls
  ``input[0].add(input[1])``, which a plain tensor cannot do with a CrypTensor).

Anything else on secret data (a comparison, a max, sin/cos of a secret) is refused in one line
naming the operator and node.
"""

from __future__ import annotations

import numpy as np

from aero_compile.errors import AeroError

from ..protocols import safe_public_constant

# Operators crypten.nn has a module for, and that act on CrypTensors as used here.
CRYPTEN_OPS = frozenset({"Add", "Sub", "Mul", "Div", "MatMul", "Pow", "Sqrt", "Exp", "Relu", "Sigmoid",
                         "Softmax", "LogSoftmax", "Transpose", "Reshape", "Slice", "Concat", "Gather", "Expand",
                         "Constant"})
# What to do about the nonlinearities the AERO passes remove (the refusal says it).
_HINTS = {
    "LayerNormalization": "remove it first (--passes all: remove-layernorm)",
    "Tanh": "a tanh GELU? remove it first (--passes all: gelu-to-identity)",
    "Erf": "CrypTen's erf is a Taylor series that diverges beyond |x| ~ 2.5; remove GELU first (gelu-to-identity)",
    "Gelu": "remove it first (--passes all: gelu-to-identity)",
}
_PASS_THROUGH = frozenset({"Identity", "Dropout"})
_SHAPE_ONLY = frozenset({"Squeeze", "Unsqueeze", "Flatten", "Reshape"})


def lower_for_crypten(model, weights: dict[str, np.ndarray], input_name: str):
    """Rewrite an exported model (weights as graph inputs) into CrypTen's form; returns a new ModelProto."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    rewriter = _Rewriter(weights, shapes)
    for initializer in graph.initializer:  # non-weight initializers: public constants (masks, shape values)
        rewriter.public[initializer.name] = numpy_helper.to_array(initializer)
    for node in graph.node:
        rewriter.visit(node)
    output = graph.output[0].name
    if output in rewriter.public:
        raise AeroError("cannot export to ONNX for CrypTen: the logits do not depend on the tokens")
    nodes = rewriter.finish(output)
    inputs = [value for value in graph.input if value.name == input_name]
    initializers = [numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)
                    for name, value in rewriter.owner_values.items() if rewriter.used(name)]
    new_graph = helper.make_graph(nodes, graph.name or "aero", inputs, list(graph.output), initializers)
    lowered = helper.make_model(new_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                                producer_name="aero-compile")
    return lowered


class _Rewriter:
    """Walk the nodes in order: fold public ones, keep or fold owner ones, rewrite secret ones."""

    def __init__(self, weights: dict[str, np.ndarray], shapes: dict[str, list[int]]):
        self.public: dict[str, np.ndarray] = {}
        self.owner_values: dict[str, np.ndarray] = dict(weights)
        self.owner: set[str] = set(weights)  # weights and views of them (kept as ops: free on shares)
        self.shapes = shapes
        self.nodes: list = []
        self.alias: dict[str, str] = {}
        self.constants_emitted: set[str] = set()
        self.made: dict[tuple, str] = {}  # (dtype, shape, bytes) -> name of the constant made for it
        self.counter = 0

    # -- values ---------------------------------------------------------------------------------

    def name(self, value: str) -> str:
        return self.alias.get(value, value)

    def is_secret(self, value: str) -> bool:
        value = self.name(value)
        return bool(value) and value not in self.public and value not in self.owner

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}_crypten_{self.counter}"

    def constant(self, value, base: str = "constant") -> str:
        """A public value as a Constant node (emitted once, where first read; equal values share one)."""
        value = np.asarray(value)
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self.made:
            self.made[key] = name = self.fresh(base)
            self.public[name] = value
        return self.made[key]

    def read(self, value: str) -> str:
        """The name a kept node reads; a public value gets its Constant node here."""
        from onnx import helper, numpy_helper

        value = self.name(value)
        if value in self.public and value not in self.constants_emitted:
            array = np.asarray(self.public[value])
            if array.dtype == np.bool_:
                array = array.astype(np.float32)
            self.nodes.append(helper.make_node("Constant", [], [value], value=numpy_helper.from_array(array, value)))
            self.constants_emitted.add(value)
        return value

    def shape(self, value: str) -> list[int]:
        value = self.name(value)
        if value in self.public:
            return list(np.shape(self.public[value]))
        if value in self.owner_values:
            return list(np.shape(self.owner_values[value]))
        shape = self.shapes.get(value)
        if not shape or any(d <= 0 for d in shape):
            raise AeroError(f"cannot export to ONNX for CrypTen: the shape of '{value}' is not static")
        return shape

    def used(self, name: str) -> bool:
        return any(name in node.input for node in self.nodes)

    def emit(self, op: str, inputs: list[str], outputs: list[str], **attributes) -> None:
        from onnx import helper

        self.nodes.append(helper.make_node(op, [self.read(i) for i in inputs], outputs, **attributes))

    # -- nodes ----------------------------------------------------------------------------------

    def visit(self, node) -> None:
        inputs = [self.name(i) for i in node.input]
        present = [i for i in inputs if i]
        if node.op_type == "Constant" or all(i in self.public for i in present):
            self._fold_public(node, inputs)
        elif not any(self.is_secret(i) for i in present):
            self._owner(node, inputs)
        else:
            self._secret(node, inputs)

    def _evaluate(self, node, inputs: list[str]) -> list[np.ndarray]:
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        feeds = {f"in{k}": self.public.get(i, self.owner_values.get(i)) for k, i in enumerate(inputs) if i}
        names = [f"in{k}" if i else "" for k, i in enumerate(inputs)]
        single = helper.make_node(node.op_type, names, [f"out{k}" for k in range(len(node.output))],
                                  domain=node.domain)
        single.attribute.extend(node.attribute)
        try:
            results = ReferenceEvaluator(single).run(None, feeds)
        except Exception as exc:
            raise AeroError(f"cannot export to ONNX for CrypTen: cannot precompute {node.op_type} (node "
                            f"'{node.name}'): {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        return results

    def _fold_public(self, node, inputs):
        for output, value in zip(node.output, self._evaluate(node, inputs)):
            self.public[output] = np.asarray(value)

    def _owner(self, node, inputs: list[str]) -> None:
        """An op on weights alone: views stay ops (free on the owner's shares), the rest the owner computes now."""
        if node.op_type in ("Transpose", "Reshape") and inputs[0] in self.owner:
            self._secret(node, inputs)
            self.owner.update(node.output)
            return
        for output, value in zip(node.output, self._evaluate(node, inputs)):
            self.owner_values[output] = np.asarray(value, dtype=np.float32)
            self.owner.add(output)

    def _secret(self, node, inputs: list[str]) -> None:
        op, out = node.op_type, list(node.output)
        attributes = _attributes(node)
        if op in _PASS_THROUGH or (op == "Cast" and _is_float_cast(attributes)):
            self.alias[out[0]] = inputs[0]
        elif op == "Split":
            self._split(node, inputs, attributes)
        elif op in _SHAPE_ONLY or (op == "Expand" and _numel(self.shape(out[0])) == _numel(self.shape(inputs[0]))):
            self.emit("Reshape", [inputs[0], self.constant(np.array(self.shape(out[0]), dtype=np.int64), "shape")], out)
        elif op == "Neg":
            self.emit("Mul", [inputs[0], self.constant(np.float32(-1), "minus_one")], out)
        elif op == "Reciprocal":
            self.emit("Pow", [inputs[0], self.constant(np.float32(-1), "minus_one")], out)
        elif op in ("Add", "Mul") and not self.is_secret(inputs[0]):
            self.emit(op, [inputs[1], inputs[0]], out)
        elif op == "Sub" and not self.is_secret(inputs[0]):
            negated = self.fresh(f"{out[0]}_negated")
            self.emit("Mul", [inputs[1], self.constant(np.float32(-1), "minus_one")], [negated])
            self.emit("Add", [negated, inputs[0]], out)
        elif op == "Div" and not self.is_secret(inputs[0]):
            inverse = self.fresh(f"{out[0]}_inverse")
            self.emit("Pow", [inputs[1], self.constant(np.float32(-1), "minus_one")], [inverse])
            self.emit("Mul", [inverse, inputs[0]], out)
        elif op == "MatMul" and not self.is_secret(inputs[0]) and inputs[0] not in self.owner:
            self._public_matmul(node, inputs)
        elif op == "Where":
            self._where(node, inputs)
        elif op == "Gemm":
            self._gemm(node, inputs, attributes)
        elif op in ("ReduceSum", "ReduceMean"):
            self._reduce(node, inputs, attributes)
        elif op == "Slice":
            self._slice(node, inputs)
        elif op == "Transpose" and "perm" not in attributes:
            self.emit(op, inputs, out, perm=list(reversed(range(len(self.shape(inputs[0]))))))
        elif op == "Gather":
            self._gather(node, inputs, attributes)
        elif op == "Concat" and not all(self.is_secret(i) for i in inputs):
            raise self._refuse(node, "concatenates secret and public tensors")
        elif op in CRYPTEN_OPS:
            self.emit(op, inputs, out, **attributes)
        else:
            raise self._refuse(node, "has no CrypTen 0.4.1 module")

    def _refuse(self, node, why: str) -> AeroError:
        hint = f" ({_HINTS[node.op_type]})" if node.op_type in _HINTS else ""
        return AeroError(f"cannot export to ONNX for CrypTen: the operator {node.op_type} (node '{node.name}') on "
                         f"secret data {why}; CrypTen's from_onnx cannot run it{hint}")

    def _split(self, node, inputs, attributes) -> None:
        axis = attributes.get("axis", 0)
        rank = len(self.shape(inputs[0]))
        axis %= rank
        start = 0
        for output in node.output:
            length = self.shape(output)[axis]
            self._emit_slice(inputs[0], [start], [start + length], [axis], output)
            start += length

    def _emit_slice(self, source: str, starts, ends, axes, output: str) -> None:
        arrays = [np.array(v, dtype=np.int64) for v in (starts, ends, axes, [1] * len(axes))]
        names = [self.constant(a, label) for a, label in zip(arrays, ("starts", "ends", "axes", "steps"))]
        self.emit("Slice", [source, *names], [output])

    def _slice(self, node, inputs) -> None:
        shape = self.shape(inputs[0])
        values = [self.public.get(i) if i else None for i in inputs[1:]]
        if any(v is None for v, i in zip(values, inputs[1:]) if i):
            raise self._refuse(node, "takes computed bounds")
        starts, ends = (np.asarray(v).reshape(-1).tolist() for v in values[:2])
        axes = np.asarray(values[2]).reshape(-1).tolist() if len(values) > 2 and values[2] is not None \
            else list(range(len(starts)))
        steps = np.asarray(values[3]).reshape(-1).tolist() if len(values) > 3 and values[3] is not None \
            else [1] * len(starts)
        if any(step != 1 for step in steps):
            raise self._refuse(node, "steps by other than 1")
        axes = [a % len(shape) for a in axes]
        bounds = [slice(s, e).indices(shape[a])[:2] for s, e, a in zip(starts, ends, axes)]
        self._emit_slice(inputs[0], [b[0] for b in bounds], [max(b) for b in bounds], axes, node.output[0])

    def _gather(self, node, inputs, attributes) -> None:
        """Rows picked by public indices (CrypTen's take); negative indices counted from the end."""
        if inputs[1] not in self.public:
            raise self._refuse(node, "picks by secret indices")
        axis = attributes.get("axis", 0) % len(self.shape(inputs[0]))
        indices = np.asarray(self.public[inputs[1]]).astype(np.int64)
        indices = np.where(indices < 0, indices + self.shape(inputs[0])[axis], indices)
        self.emit("Gather", [inputs[0], self.constant(indices, "indices")], list(node.output), axis=axis)

    def _public_matmul(self, node, inputs) -> None:
        """P @ S = (S^T @ P^T)^T over the last two axes: CrypTen's MatMul needs the CrypTensor first."""
        public = np.asarray(self.public[inputs[0]])
        rank = len(self.shape(inputs[1]))
        if public.ndim < 2 or rank < 2:
            raise self._refuse(node, "multiplies a public vector by a secret")
        swap = lambda n: [*range(n - 2), n - 1, n - 2]  # noqa: E731
        secret_t, product = self.fresh(f"{node.output[0]}_secret_t"), self.fresh(f"{node.output[0]}_product_t")
        self.emit("Transpose", [inputs[1]], [secret_t], perm=swap(rank))
        self.emit("MatMul", [secret_t, self.constant(np.swapaxes(public, -1, -2).copy(), "public_t")], [product])
        self.emit("Transpose", [product], list(node.output), perm=swap(len(self.shape(node.output[0]))))

    def _where(self, node, inputs) -> None:
        """where(c, a, b) = a*c + b*(1-c) with c public; a public side is one constant (its masked values clamped)."""
        condition, (a, b) = inputs[0], inputs[1:]
        if condition not in self.public:
            raise self._refuse(node, "selects by a secret condition")
        keep = np.asarray(self.public[condition]).astype(np.float32)
        terms, constant = [], None
        for side, weight in ((a, keep), (b, 1.0 - keep)):
            if self.is_secret(side) or side in self.owner:
                scaled = self.fresh(f"{node.output[0]}_term")
                self.emit("Mul", [side, self.constant(weight, "select")], [scaled])
                terms.append(scaled)
            else:
                value = np.asarray(safe_public_constant(np.asarray(self.public[side], dtype=np.float32)), np.float32)
                part = value * weight
                constant = part if constant is None else constant + part
        if constant is not None:
            terms.append(self.constant(constant.astype(np.float32), "masked"))
        if len(terms) == 1:
            self.alias[node.output[0]] = terms[0]
        else:
            self.emit("Add", terms, list(node.output))

    def _gemm(self, node, inputs, attributes) -> None:
        """alpha * A' @ B' + beta * C as MatMul/Mul/Add (CrypTen's Gemm needs attributes the exporter omits)."""
        operands = []
        for name, flag in zip(inputs[:2], ("transA", "transB")):
            if attributes.get(flag, 0):
                transposed = self.fresh(f"{node.output[0]}_{flag}")
                self._visit_as("Transpose", [name], [transposed], perm=[1, 0])
                name = transposed
            operands.append(name)
        alpha, beta = attributes.get("alpha", 1.0), attributes.get("beta", 1.0)
        has_bias = len(inputs) > 2 and inputs[2]
        product = self.fresh(f"{node.output[0]}_product") if alpha != 1.0 or has_bias else node.output[0]
        self._visit_as("MatMul", operands, [product])
        if alpha != 1.0:
            scaled = self.fresh(f"{node.output[0]}_scaled") if has_bias else node.output[0]
            self._visit_as("Mul", [product, self.constant(np.float32(alpha), "alpha")], [scaled])
            product = scaled
        if has_bias:
            bias = inputs[2]
            if beta != 1.0:
                bias = self.fresh(f"{node.output[0]}_bias")
                self._visit_as("Mul", [inputs[2], self.constant(np.float32(beta), "beta")], [bias])
            self._visit_as("Add", [product, bias], list(node.output))

    def _visit_as(self, op: str, inputs: list[str], outputs: list[str], **attributes) -> None:
        """Handle a node this rewriter made up as if the exporter had written it."""
        from onnx import helper

        self.visit(helper.make_node(op, inputs, outputs, name=outputs[0], **attributes))

    def _reduce(self, node, inputs, attributes) -> None:
        """A sum or mean over the last axis is a product with a public column (1 or 1/n)."""
        shape = self.shape(inputs[0])
        axes = attributes.get("axes")
        if axes is None and len(inputs) > 1 and inputs[1]:
            axes = np.asarray(self.public.get(inputs[1], [])).reshape(-1).tolist()
        if not axes or [a % len(shape) for a in axes] != [len(shape) - 1]:
            raise self._refuse(node, "reduces over an axis other than the last")
        n = shape[-1]
        column = np.full((n, 1), 1.0 / n if node.op_type == "ReduceMean" else 1.0, dtype=np.float32)
        if attributes.get("keepdims", 1):
            self.emit("MatMul", [inputs[0], self.constant(column, "column")], list(node.output))
            return
        kept = self.fresh(f"{node.output[0]}_kept")
        self.emit("MatMul", [inputs[0], self.constant(column, "column")], [kept])
        self.emit("Reshape", [kept, self.constant(np.array(shape[:-1], dtype=np.int64), "shape")], list(node.output))

    def finish(self, output: str) -> list:
        """The kept nodes, with the graph output produced under its own name."""
        from onnx import helper

        final = self.name(output)
        if final != output:
            self.nodes.append(helper.make_node("Reshape", [final, self.read(self.constant(
                np.array(self.shape(output), dtype=np.int64), "shape"))], [output]))
        return self.nodes


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _is_float_cast(attributes: dict) -> bool:
    from onnx import TensorProto

    return attributes.get("to") in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)


def _numel(shape) -> int:
    return int(np.prod(shape)) if shape else 1

