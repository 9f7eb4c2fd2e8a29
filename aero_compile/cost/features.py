"""The sizes a protocol's cost depends on, read off one classified op and the graph's shapes.

Features (all for the analysed [batch, seq_len]):

* ``calls``: 1 per op.
* ``elements``: scalars the op transforms (its largest secret operand: a softmax's scores, a max's input).
* ``length``: that operand's last dimension (the reduced one for softmax, norms, max); ``rows`` = elements / length.
* ``operand_elements``: scalars of every non-public operand of a product (activation and weight): what
  Beaver-triple multiplication opens. An embedding counts its token ids one-hot (ids x vocabulary).
* ``io_elements``: secret activation in + result out of a product: what an HE matrix product ships.
* ``macs``: multiply-accumulates of a product (compute time).
* ``activation_elements``: scalars of the secret operands of a product (the embedding's one-hot): all a
  product with a weight masked once per model opens per query (``masked_weight_step``).
* ``matrix_products``: independent matrix products of a matmul (its output's leading dims: one per
  attention head); 1 for a linear layer or an embedding (one product with a shared weight).
* ``ciphertexts``: ceil(elements / 8192): ring-LWE ciphertexts of degree 8192 that pack the op's
  elements (an HE protocol, e.g. SPU cheetah's elementwise product, pays per ciphertext).
* ``he_sent_ciphertexts``, ``he_response_ciphertexts``: of a matrix product, the ciphertexts SPU cheetah
  ships each way for it (``cheetah_packing.py``: its block search and packing, from m, k, n);
  ``he_polynomials``, ``he_encryptions``, ``he_ct_pt_products``, ``he_result_blocks``, ``he_automorphisms``,
  ``he_responses``, ``result_elements``: the work its seconds follow, counted as SPU runs it
  (``cheetah_packing.secret_product_work``: polynomials encoded and NTT'd, encryptions, plaintext x ciphertext
  multiply-adds, result blocks, packing automorphisms, returned ciphertexts, truncated result elements).

An op is priced as one or more *protocol steps* (``protocol_steps``): each names the profile entry
that prices it and carries its own features. Mostly one step named after the op's kind; where
engines run different programs for one kind, the entry names the form (see ``_steps``), so that a
measured profile calibrates each form on exactly the program the engine runs for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from ..ops import NONLINEAR, Op, OpKind, is_log_softmax, target_name
from ..shapes import TensorMeta, numel
from ..secrecy import CacheFactor, Secrecy, fixed_weights, owner_divisor
from .cheetah_packing import secret_product_ciphertexts, secret_product_work

PRODUCTS = frozenset({OpKind.LINEAR, OpKind.MATMUL, OpKind.MUL, OpKind.EMBEDDING})
# Kinds that never communicate under additive secret sharing.
LOCAL = frozenset({OpKind.ELEMENTWISE, OpKind.REDUCE, OpKind.RESHAPE, OpKind.NOOP, OpKind.CONSTANT})


def operands(op: Op, metas: dict[fx.Node, TensorMeta]) -> list[fx.Node]:
    """Tensor values the op reads from outside itself, weights and buffers included, in argument order."""
    members = set(op.nodes)
    seen: dict[fx.Node, None] = {}
    for node in op.nodes:
        for arg in node.all_input_nodes:
            if arg not in members and arg in metas:
                seen.setdefault(arg, None)
    return list(seen)


def cost_kind(op: Op, args: list[fx.Node], levels: dict[fx.Node, Secrecy]) -> OpKind | None:
    """The protocol this op runs, or None when it is local (no secret input, or secret x public)."""
    if op.kind in LOCAL:
        return None
    secret = [a for a in args if levels.get(a, Secrecy.PUBLIC) is Secrecy.SECRET]
    if not secret:
        return None  # public, or the owner computes it in the clear (e.g. reciprocal(alpha))
    if op.kind in PRODUCTS:
        hidden = [a for a in args if levels.get(a, Secrecy.PUBLIC) >= Secrecy.OWNER]
        return op.kind if len(hidden) >= 2 else None  # secret x public is a local scaling
    if op.kind is OpKind.DIV and len(args) >= 2 and levels.get(args[-1]) is not Secrecy.SECRET:
        # a public divisor scales locally; an owner's is inverted in the clear: a secret product remains
        return OpKind.MUL if owner_divisor(op.output, levels) is not None else None
    return op.kind


def op_features(op: Op, kind: OpKind, args: list[fx.Node], levels: dict[fx.Node, Secrecy],
                metas: dict[fx.Node, TensorMeta]) -> dict[str, float]:
    """Feature values of one costed op (see the module docstring)."""
    out_meta = metas.get(op.output)
    out_elements = numel(out_meta.shape) if out_meta else 0
    secret = [a for a in args if levels.get(a) is Secrecy.SECRET]
    main = max(secret, key=lambda a: numel(metas[a].shape))
    main_shape = metas[main].shape
    elements = numel(main_shape) if kind in NONLINEAR else out_elements
    length = int(main_shape[-1]) if main_shape else 1
    features = {"calls": 1.0, "elements": float(elements), "length": float(length),
                "rows": float(elements // max(length, 1)), "ciphertexts": float(ciphertexts(elements))}
    if kind in PRODUCTS:
        hidden = [a for a in args if levels.get(a, Secrecy.PUBLIC) >= Secrecy.OWNER]
        vocab = 0
        if kind is OpKind.EMBEDDING:
            weight = next(a for a in hidden if levels[a] is Secrecy.OWNER)
            vocab, width = metas[weight].shape[0], metas[weight].shape[-1]
            one_hot = numel(main_shape) * vocab
            features["operand_elements"] = float(one_hot + numel(metas[weight].shape))
            features["activation_elements"] = float(one_hot)
            features["io_elements"] = float(one_hot + out_elements)
            features["macs"] = float(one_hot * width)
        else:
            features["operand_elements"] = float(sum(numel(metas[a].shape) for a in hidden))
            features["activation_elements"] = float(sum(numel(metas[a].shape) for a in secret))
            features["io_elements"] = float(sum(numel(metas[a].shape) for a in secret) + out_elements)
            features["macs"] = float(out_elements * _contracted(kind, args, metas, vocab))
        if kind is OpKind.MATMUL and out_meta and len(out_meta.shape) >= 2:
            features["matrix_products"] = float(numel(out_meta.shape[:-2]) or 1)
        elif kind in (OpKind.LINEAR, OpKind.MATMUL, OpKind.EMBEDDING):
            features["matrix_products"] = 1.0
        if kind in (OpKind.LINEAR, OpKind.MATMUL, OpKind.EMBEDDING) and out_meta and out_meta.shape:
            features.update(_he_ciphertexts(features, out_meta, _contracted(kind, args, metas, vocab)))
    return features


def _contracted(kind: OpKind, args: list[fx.Node], metas: dict[fx.Node, TensorMeta], vocab: int) -> int:
    """The length a product sums over: 1 for an elementwise product, the one-hot's width for an embedding,
    else the first operand's last dim (a linear's activation, a matmul's left side; not the largest operand,
    which for [m x k] . [k x n] with n > m is the right side)."""
    if kind is OpKind.MUL:
        return 1
    if kind is OpKind.EMBEDDING:
        return vocab
    shape = metas[args[0]].shape
    return int(shape[-1]) if shape else 1


def _he_ciphertexts(features: dict[str, float], out_meta: TensorMeta, contracted: int) -> dict[str, float]:
    """[m x k] . [k x n] of each matrix product (an embedding: one_hot [ids x vocab] . table), priced by
    the ciphertexts cheetah ships for it."""
    n = int(out_meta.shape[-1])
    products = int(features["matrix_products"])
    m = numel(out_meta.shape) // max(n * products, 1)
    return {**secret_product_ciphertexts(m, contracted, n, products), **secret_product_work(m, contracted, n, products)}


CIPHERTEXT_SLOTS = 8192


def ciphertexts(elements: int) -> int:
    """Degree-8192 ciphertexts that pack ``elements`` values (see ``ciphertexts`` above)."""
    return -(-int(elements) // CIPHERTEXT_SLOTS)


@dataclass(frozen=True)
class Step:
    """One protocol an op runs under MPC: the profile entry that prices it, with that entry's features."""

    entry: str
    features: dict[str, float]


# The profile entries of weights masked once per model: the per-query product (activation side opened)
# and the once-per-model opening of W - B (offline), priced per weight.
MASKED_WEIGHT_PRODUCT = "matmul/masked-weight"
WEIGHT_MASK = "weight_mask"
# Compute-only entries: an op local under secret sharing (no rounds, no bytes) still runs on the shares;
# CrypTen pays a Python call per such op (~0.1-0.5 ms), which a graph with few protocol ops (quadratic
# attention, folded scales) spends a third of its time on. "local/view": views, transposes, slices (per call).
LOCAL_COMPUTE, LOCAL_VIEW_COMPUTE = "local", "local/view"
VIEW_KINDS = frozenset({OpKind.RESHAPE, OpKind.NOOP})


def protocol_steps(op: Op, levels: dict[fx.Node, Secrecy], metas: dict[fx.Node, TensorMeta],
                   weight_masks: str = "per-query",
                   cached: dict[fx.Node, CacheFactor] | None = None) -> tuple[OpKind, dict[str, float], list[Step]] | None:
    """What one op costs: the kind it is reported as, its features and its protocol steps (None: local).

    ``weight_masks="per-model"``: a product with a weight is priced as ``matmul/masked-weight`` (see
    ``masked_weights``); the weight's own opening is offline (``offline_steps``). ``cached``: a generation
    program's products with its K/V cache (``secrecy.cache_factors``), priced as ``cache_product_step``.
    """
    args = operands(op, metas)
    kind = cost_kind(op, args, levels)
    if kind is None:
        return None
    if kind is OpKind.UNKNOWN:
        return kind, {}, [Step(kind.value, {})]
    features = op_features(op, kind, args, levels, metas)
    if weight_masks == "per-model" and masked_weights(op, levels, metas):
        return kind, features, [Step(MASKED_WEIGHT_PRODUCT, features)]
    if weight_masks == "per-model" and cached and not op.is_region and op.output in cached:
        return kind, features, [cache_product_step(op.output, cached[op.output], features, metas)]
    return kind, features, _steps(op, kind, features, levels, metas)


def local_step(op: Op, levels: dict[fx.Node, Secrecy], metas: dict[fx.Node, TensorMeta]) -> Step | None:
    """The compute-only step of an op that runs locally on the client's secret shares (``LOCAL_COMPUTE``), or
    None: the op communicates (``protocol_steps``), or reads no secret (plaintext torch: negligible)."""
    args = operands(op, metas)
    if cost_kind(op, args, levels) is not None or op.kind is OpKind.CONSTANT:
        return None  # communicates: priced by ``protocol_steps``
    if not any(levels.get(a) is Secrecy.SECRET for a in args):
        return None
    if op.kind in VIEW_KINDS:
        return Step(LOCAL_VIEW_COMPUTE, {"calls": 1.0})
    meta = metas.get(op.output)
    return Step(LOCAL_COMPUTE, {"calls": 1.0, "elements": float(numel(meta.shape)) if meta else 0.0})


def masked_weights(op: Op, levels: dict[fx.Node, Secrecy], metas: dict[fx.Node, TensorMeta]) -> list[fx.Node]:
    """The weights a product op reads that an engine masks once per model (``secrecy.fixed_weights``).

    Single-node ops only: the private engines lower node by node, and no captured product is a region.
    """
    return [] if op.is_region else fixed_weights(op.output, op.kind, levels, metas)


def cache_product_step(node: fx.Node, factor: CacheFactor, features: dict[str, float],
                       metas: dict[fx.Node, TensorMeta]) -> Step:
    """A product with the K/V cache whose rows are masked once each (``secrecy.cache_factors``).

    The protocol is a product with a weight masked once (``matmul/masked-weight``): one round opening the
    other factor minus a fresh mask; in the same message go the cache's new rows minus their masks
    (opened once, kept for every later step). So its opened elements are the other factor's and the
    cached factor's new rows' (in the prefill every row is new: the same bytes as a plain product).
    """
    cache_elements = numel(metas[node.args[factor.index]].shape)
    other = numel(metas[node.args[1 - factor.index]].shape)
    opened = other + round(cache_elements * factor.new_fraction)
    return Step(MASKED_WEIGHT_PRODUCT, {**features, "activation_elements": float(opened)})


def offline_steps(weights: list[fx.Node], metas: dict[fx.Node, TensorMeta]) -> list[Step]:
    """The once-per-model cost of masking these weights: one ``weight_mask`` opening of W - B each."""
    return [Step(WEIGHT_MASK, {"calls": 1.0, "elements": float(numel(metas[w].shape))}) for w in weights]


def _steps(op: Op, kind: OpKind, features: dict[str, float], levels, metas) -> list[Step]:
    """The forms. An op whose engine program is not one protocol is priced as the protocols it runs:

    * ``reciprocal(b)`` and ``public / b``: ``reciprocal`` of b; ``a / b`` with a hidden too:
      ``reciprocal`` of b, then the ``mul`` of a by 1/b (b may be broadcast: [rows, 1] under [rows, L]);
    * ``sqrt(x)``: ``rsqrt``, then ``mul`` by x; ``rsqrt(x)``: ``rsqrt``;
    * ``log_softmax``: its own entry (max, exp, sum, log); ``x ** 2`` / ``square``: ``square``;
    * an elementwise product (and the product step of a division) is ``mul`` between two secrets and
      ``mul/weight`` when a factor is a value only the model owner knows (a weight, or 1/w it shares):
      one Beaver product either way in CrypTen (its profile lists ``mul/weight`` as ``mul``), but an
      HE product with a plaintext weight in engines where the server holds the weights in the clear.
    """
    node = op.output
    name = "" if op.is_region else target_name(node)
    if kind is OpKind.DIV:
        numerator, divisor = (None, node.args[0]) if name == "reciprocal" else node.args[:2]
        inverse = Step("reciprocal", elementwise_features(metas[divisor].shape))
        if not isinstance(numerator, fx.Node) or levels.get(numerator, Secrecy.PUBLIC) is Secrecy.PUBLIC:
            return [inverse]  # a public numerator scales 1/b locally
        return [inverse, Step(product_entry([numerator, divisor], levels),
                              product_features([numerator, divisor], node, levels, metas))]
    if kind is OpKind.RSQRT and name == "sqrt":  # sqrt(x) = x * rsqrt(x)
        source = node.args[0]
        return [Step("rsqrt", features), Step("mul", product_features([source, source], node, levels, metas))]
    if kind is OpKind.SOFTMAX and is_log_softmax(node):
        return [Step("log_softmax", features)]
    if kind is OpKind.MUL:  # also a division by the owner's weight (cost_kind): x * (1/w)
        return [Step(product_entry(operands(op, metas), levels), features)]
    if kind is OpKind.POW:
        exponent = node.args[1] if len(node.args) > 1 else None
        return [Step("square" if name == "square" or exponent == 2 else "pow", features)]
    return [Step(kind.value, features)]


def product_entry(factors: list, levels: dict[fx.Node, Secrecy]) -> str:
    """``mul/weight`` when a factor is known to the model owner alone, else ``mul`` (two secrets)."""
    owner = any(isinstance(f, fx.Node) and levels.get(f) is Secrecy.OWNER for f in factors)
    return "mul/weight" if owner else "mul"


def elementwise_features(shape: tuple[int, ...]) -> dict[str, float]:
    """Features of a nonlinearity applied to one tensor of this shape."""
    elements = numel(shape)
    length = int(shape[-1]) if shape else 1
    return {"calls": 1.0, "elements": float(elements), "length": float(length),
            "rows": float(elements // max(length, 1)), "ciphertexts": float(ciphertexts(elements))}


def product_features(factors: list[fx.Node], out: fx.Node, levels: dict[fx.Node, Secrecy],
                     metas: dict[fx.Node, TensorMeta]) -> dict[str, float]:
    """Features of an elementwise product inside a composite op (a factor stands for its value or its inverse)."""
    out_elements = numel(metas[out].shape)
    secret = [f for f in factors if levels.get(f) is Secrecy.SECRET]
    return {"calls": 1.0, "elements": float(out_elements), "ciphertexts": float(ciphertexts(out_elements)),
            "operand_elements": float(sum(numel(metas[f].shape) for f in factors)),
            "io_elements": float(sum(numel(metas[f].shape) for f in secret) + out_elements),
            "macs": float(out_elements)}
