"""The one-node forms SPU's calibration runs: their sizes, features, and programs (jax function, inputs).

``calibrate.py`` measures their rounds, bytes and messages in SPU's simulator; ``process_timing.py``
times the same programs between two party processes. Each form is one of CrypTen's calibration forms
(``targets/crypten/calibration_forms.py``, the one-node graphs the analyzer prices) or an extra one
below, lowered by this backend's ``dispatch.lower_node`` (the code ``--run-private --engine spu`` runs).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from aero_compile.secrecy import propagate_secrecy
from aero_compile.targets.private.calibration import form_shapes
from aero_compile.targets.private.graph import owner_shares

from .dispatch import lower_node

# (rows, length, width): elements rows x length from 128 to 32,768: one ciphertext, its bound, the switch
# from cached triples to direct HE at 16,384, and beyond
SIZES = ((2, 64, 64), (8, 128, 32), (32, 128, 32), (64, 128, 16), (128, 128, 16), (256, 128, 16))
# matrix products from one ciphertext each way to dozens, sent-heavy and response-heavy (he_* features)
# (the first three come back unpacked: one result block)
MATMUL_SIZES = ((2, 64, 64), (8, 32, 32), (32, 16, 16), (4, 64, 64), (16, 128, 32), (128, 64, 1024), (128, 1024, 64),
                (128, 512, 512), (64, 256, 256))
# messages only (calibrate spu --messages): a norm's messages grow with log2 of its reduced length (a max over
# a row is a tree of comparisons), and SIZES reduce over 64 and 128 only; rows 16 to 256
MESSAGE_SIZES = ((16, 8, 8), (16, 16, 8), (16, 32, 8), (64, 8, 8), (256, 8, 8), (64, 32, 8), (256, 32, 8))
MESSAGE_FORMS = ("softmax", "log_softmax", "max", "layernorm", "rmsnorm")
MESSAGE_REPEATS = 3
# Run a size until this many elements were processed: a multiple of the Beaver-triple cache's refill (one HE
# batch of 4096 triples, ~1.14 MB), so that the mean pays exactly the refills a model pays per element. With
# 16 runs at most, 128 elements ran 2,048: one refill or none by chance (mul's 594 B per element, square's 35,
# where 314 is the rate), and a decode step's 64-element products were priced at 2.9x what they cost.
REPEAT_ELEMENTS = 16384
MAX_REPEATS = 128
REFILL_MESSAGES = 1000  # a run with this many more messages than its form's median paid a silent-OT refill
ELEMENTWISE = ("calls", "ciphertexts", "elements")
PRODUCT = ("calls", "io_elements", "operand_elements")
# per ciphertext each way, plus a constant per matrix (a batched product runs one HE product per matrix:
# measured, 4 heads cost 4x one)
MATRIX = ("matrix_products", "he_sent_ciphertexts", "he_response_ciphertexts", "he_unpacked_responses",
          "he_unpacked_coefficients")
# a product's seconds (cost/cheetah_packing.secret_product_work, counted as SPU's cheetah_dot.cc runs them): per
# product (its messages and dispatch), per polynomial encoded and NTT'd (with its plaintext x ciphertext
# multiply-adds), per packing automorphism (a key switch), per result element (the truncation, H2A and decoding)
MATRIX_SECONDS = ("matrix_products", "he_polynomials", "he_automorphisms", "result_elements")
NORM = ("calls", "ciphertexts", "elements", "rows")
FEATURES = {"relu": ELEMENTWISE, "gelu": ELEMENTWISE, "silu": ELEMENTWISE, "softmax": NORM, "log_softmax": NORM,
            "max": NORM, "layernorm": NORM, "rmsnorm": NORM, "exp": ELEMENTWISE, "log": ELEMENTWISE,
            "tanh": ELEMENTWISE, "sigmoid": ELEMENTWISE, "rsqrt": ELEMENTWISE, "reciprocal": ELEMENTWISE,
            "square": ELEMENTWISE, "compare": ELEMENTWISE, "mul": PRODUCT, "matmul": MATRIX}
# Forms of this backend's own, each calibrating the entry the analyzer prices it by (with the form of that name)
EXTRA_FORMS = {"matmul/batched": ("matmul", lambda g: g.call(torch.ops.aten.matmul.default, g.secret((4, g.rows, g.length)),
                                                               g.secret((4, g.length, g.width))))}
CHECKS = ("sqrt", "div", "div/rows", "div/weight")  # priced by the entries above: checked against them
ALIASES = {"linear": "matmul", "embedding": "matmul", "mul/weight": "mul"}


class FormContext:
    """What ``dispatch.lower_node`` reads, for a one-node form: its inputs as the jax function's arguments."""

    def __init__(self, gm: fx.GraphModule, values: dict[fx.Node, object], inverses: dict[fx.Node, object]):
        self.gm, self.token_nodes, self.values, self.inverses = gm, frozenset(), values, inverses

    def value(self, node: fx.Node):
        return self.values[node]

    def owner_inverse(self, node: fx.Node):
        return self.inverses.get(node)

    def inv_sqrt_scale(self, node: fx.Node) -> float:
        return 1.0


def _build(name: str, rows: int, length: int, width: int):
    from aero_compile.targets.crypten.calibrate import build
    from aero_compile.targets.crypten.calibration_forms import FormGraph

    if name not in EXTRA_FORMS:
        return build(name, rows, length, width)
    graph = FormGraph(rows, length, width)
    node = EXTRA_FORMS[name][1](graph)
    return graph.module(node), node, graph.inputs


def _analyzer_steps(gm: fx.GraphModule, node: fx.Node, inputs) -> list:
    from aero_compile.cost.features import protocol_steps
    from aero_compile.ops import classify_graph
    op = next(op for op in classify_graph(gm) if op.output is node)
    return protocol_steps(op, propagate_secrecy(gm), form_shapes(gm, inputs))[2]


def form_program(name: str, rows: int, length: int, width: int):
    """(jax function, input arrays, analyzer steps) of one form at one size: client values and the
    owner's (weights, 1/w) are the function's secret inputs, in that order."""
    gm, node, client_values = _build(name, rows, length, width)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    weights = {n: getattr(gm, str(n.target)).detach() for n in gm.graph.nodes if n.op == "get_attr"}
    owned, inverses = owner_shares(gm, propagate_secrecy(gm), weights)
    owner_nodes, inverse_nodes = list(owned), list(inverses)
    arrays = [v.float().numpy() for v in client_values] + [owned[n].float().numpy() for n in owner_nodes] + \
             [inverses[n].float().numpy() for n in inverse_nodes]

    def function(*inputs):
        count = len(placeholders) + len(owner_nodes)
        values = dict(zip(placeholders + owner_nodes, inputs[:count]))
        return lower_node(FormContext(gm, values, dict(zip(inverse_nodes, inputs[count:]))), node)

    steps = [{"entry": s.entry, "features": s.features} for s in _analyzer_steps(gm, node, client_values)]
    return function, arrays, steps


def _is_matrix(name: str) -> bool:
    return FEATURES.get(EXTRA_FORMS.get(name, (name,))[0]) is MATRIX
