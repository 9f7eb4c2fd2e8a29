"""The op forms the crypten profile prices, each built as the one-node graph the backend lowers.

A form is a node as captured graphs hold it: an aten call on the client's secret activations and
the owner's weights. Calibration (``calibrate.py``) builds each form at several sizes, asks the cost
analyzer which protocol steps it prices that node by (``cost.features.protocol_steps``), and runs
the node between two CrypTen parties through the backend's own ``dispatch.lower_node``: what is
measured is the program ``--run-private`` runs for that node.

A form the analyzer prices as one step named like the form calibrates that profile entry. A form it
prices by other entries (a division: reciprocal, then a product) calibrates nothing; it is measured to
check that those steps add up to what the backend runs.

Adding a form is one entry in ``FORMS``, e.g. a secret elementwise product with the owner's weight::

    Form("mul/weight", lambda g: g.call(aten.mul.Tensor, g.secret(), g.weight((g.rows, g.length))))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx as fx

aten = torch.ops.aten

# Features that explain the bytes of a form (least squares; see cost/features.py).
ELEMENTWISE = ("elements",)
NORM = ("elements", "rows", "length")  # per element, per row (inv_sqrt) and per gain element
PRODUCT = ("operand_elements",)  # a Beaver product opens both operands
MASKED_PRODUCT = ("activation_elements",)  # a product with a weight masked once opens its activation only


class FormGraph:
    """One form's graph at one size: client values are placeholders, the owner's weights parameters.

    Sizes: an activation is [rows, length]; a matrix product's right operand is [length, width].
    """

    def __init__(self, rows: int, length: int, width: int, seed: int = 0):
        self.rows, self.length, self.width = rows, length, width
        self.graph = fx.Graph()
        self.root = torch.nn.Module()
        self.inputs: list[torch.Tensor] = []  # plaintext values of the placeholders, in order
        self._generator = torch.Generator().manual_seed(seed)
        self._body: fx.Node | None = None  # first non-placeholder node: placeholders go before it

    def secret(self, shape: tuple[int, ...] | None = None, *, positive: bool = False) -> fx.Node:
        """A client activation ([rows, length] by default); ``positive`` keeps log, 1/x and rsqrt in range."""
        value = torch.randn(shape or (self.rows, self.length), generator=self._generator)
        self.inputs.append(value.abs() + 0.5 if positive else value)
        if self._body is None:
            return self.graph.placeholder(f"x{len(self.inputs)}")
        with self.graph.inserting_before(self._body):
            return self.graph.placeholder(f"x{len(self.inputs)}")

    def weight(self, shape: tuple[int, ...], fill: float | None = None) -> fx.Node:
        """A parameter of the model owner (secret-shared at setup, as ``model.encrypt()`` would)."""
        name = f"w{len(list(self.root.parameters()))}"
        value = torch.randn(shape, generator=self._generator) if fill is None else torch.full(shape, fill)
        self.root.register_parameter(name, torch.nn.Parameter(value, requires_grad=False))
        return self._body_node(self.graph.get_attr(name))

    def call(self, target, *args) -> fx.Node:
        """The form's node: ``target(*args)`` as a call_function node (an aten overload, as export writes it)."""
        return self._body_node(self.graph.call_function(target, args))

    def module(self, output: fx.Node) -> fx.GraphModule:
        """The finished graph, returning ``output``."""
        self.graph.output(output)
        return fx.GraphModule(self.root, self.graph)

    def _body_node(self, node: fx.Node) -> fx.Node:
        self._body = self._body or node
        return node


@dataclass(frozen=True)
class Form:
    """One node form: its name (the profile entry it calibrates) and how to build it."""

    name: str
    build: Callable[[FormGraph], fx.Node]
    bytes_by: tuple[str, ...] = ELEMENTWISE  # the features its bytes are fitted on
    by_length: bool = False  # rounds grow with the reduced (last) length: measured per length
    # "per-model": the weights are masked once at setup (weight_masks.py); the setup is measured too and
    # calibrates the offline entry ``weight_mask``
    weight_masks: str = "per-query"
    # local under secret sharing (no rounds, no bytes): timed only (``compute_timing``), for the analyzer's
    # compute-only entries (``cost.features.local_step``)
    compute_only: bool = False


def _unary(target, positive: bool = False) -> Callable[[FormGraph], fx.Node]:
    return lambda g: g.call(target, g.secret(positive=positive))


FORMS: dict[str, Form] = {form.name: form for form in [
    Form("relu", _unary(aten.relu.default)),
    Form("gelu", _unary(aten.gelu.default)),  # exact or tanh: the backend runs both in tanh form
    Form("silu", _unary(aten.silu.default)),
    Form("softmax", lambda g: g.call(aten.softmax.int, g.secret(), -1), by_length=True),
    Form("log_softmax", lambda g: g.call(aten.log_softmax.int, g.secret(), -1), by_length=True),
    Form("max", lambda g: g.call(aten.amax.default, g.secret(), [-1], True), by_length=True),
    Form("layernorm", lambda g: g.call(aten.layer_norm.default, g.secret(), [g.length], g.weight((g.length,), 1.0),
                                       g.weight((g.length,), 0.0), 1e-5), bytes_by=NORM),
    Form("rmsnorm", lambda g: g.call(aten.rms_norm.default, g.secret(), [g.length], g.weight((g.length,), 1.0),
                                     1e-6), bytes_by=NORM),
    Form("exp", _unary(aten.exp.default)),
    Form("log", _unary(aten.log.default, positive=True)),
    Form("tanh", _unary(aten.tanh.default)),
    Form("sigmoid", _unary(aten.sigmoid.default)),
    Form("erf", _unary(aten.erf.default)),
    Form("trig", _unary(aten.cos.default)),
    Form("rsqrt", _unary(aten.rsqrt.default, positive=True)),
    Form("reciprocal", _unary(aten.reciprocal.default, positive=True)),
    Form("square", lambda g: g.call(aten.pow.Tensor_Scalar, g.secret(), 2)),
    Form("compare", lambda g: g.call(aten.gt.Scalar, g.secret(), 0.0)),
    Form("mul", lambda g: g.call(aten.mul.Tensor, g.secret(), g.secret()), bytes_by=PRODUCT),
    Form("matmul", lambda g: g.call(aten.matmul.default, g.secret(), g.secret((g.length, g.width))),
         bytes_by=PRODUCT),
    Form("matmul/masked-weight", lambda g: g.call(aten.linear.default, g.secret(), g.weight((g.width, g.length))),
         bytes_by=MASKED_PRODUCT, weight_masks="per-model"),
    # Local on the shares (compute only): an add of two secrets, and a transpose (views cost per call)
    Form("local", lambda g: g.call(aten.add.Tensor, g.secret(), g.secret()), compute_only=True),
    Form("local/view", lambda g: g.call(aten.transpose.int, g.secret(), 0, 1), compute_only=True),
    # Checks: priced by the entries above.
    Form("sqrt", _unary(aten.sqrt.default, positive=True)),  # rsqrt, then x * rsqrt(x)
    Form("div", lambda g: g.call(aten.div.Tensor, g.secret(), g.secret(positive=True))),  # reciprocal + product
    Form("div/rows", lambda g: g.call(aten.div.Tensor, g.secret(), g.secret((g.rows, 1), positive=True))),
    # the owner inverts its weight in the clear (secrecy.owner_divisor): one product
    Form("div/weight", lambda g: g.call(aten.div.Tensor, g.secret(), g.weight((g.rows, g.length), 2.0))),
]}

# Profile entries the backend runs with another form's program: a linear layer is x @ W^T (+ b,
# local) and an embedding one_hot(ids) @ table, both the matmul form's one Beaver product; a product
# with the owner's weight (``mul/weight``) is the mul form's Beaver product (weights are secret-shared).
ALIASES = {"linear": "matmul", "embedding": "matmul", "mul/weight": "mul"}
