"""Dispatch tables: how each secret node becomes CrypTensor operations.

``lower_node(ctx, node)`` is the shared walk of ``targets/private/dispatch.py`` over this file's
tables: a kind with its own protocol (softmax, norms, activations, linear algebra) goes through
``KIND_LOWERINGS``; structural and local ops (reshapes, adds, scaling, masking) and the nodes inside
Python-written regions go through ``NODE_LOWERINGS``, keyed by ``ops.target_name``. Add a lowering by
adding an entry; an op with none is a one-line AeroError that names the node.

CrypTen raises on ``public <op> secret``: every binary op here keeps the secret operand on the left.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from aero_compile.errors import AeroError
from aero_compile.ops import OpKind, classify_node, is_log_softmax, target_name
from aero_compile.secrecy import FIXED_WEIGHT_PRODUCTS
from aero_compile.targets.private.dispatch import DispatchTable, arg, lower_noop, view_sizes

from . import protocols
from .protocols import safe_public_constant
from .cache_masks import RowMaskedFactor, cache_matmul
from .weight_masks import MaskedWeight, masked_matmul


def _is_secret(value) -> bool:
    return hasattr(value, "get_plain_text")


# -- binary arithmetic, secret on the left -----------------------------------------------------------

def _add(a, b):
    if not _is_secret(a):
        a, b = b, a
    return a + safe_public_constant(b)


def _sub(a, b):
    if _is_secret(a):
        return a - safe_public_constant(b)
    return (-b) + safe_public_constant(a)


def _mul(a, b):
    return a * b if _is_secret(a) else b * a


def _div(a, b):
    if _is_secret(b):
        return _mul(a, b.reciprocal())
    return a / b if not isinstance(b, torch.Tensor) else a * (1.0 / b)


def _matmul(a, b):
    if isinstance(b, RowMaskedFactor):  # the K/V cache, each row masked once (cache_masks.py)
        return cache_matmul(a, b, factor_on_left=False)
    if isinstance(a, RowMaskedFactor):
        return cache_matmul(b, a, factor_on_left=True)
    if isinstance(b, MaskedWeight):  # a weight masked once per model (weight_masks.py)
        return masked_matmul(a, b) if _is_secret(a) else _matmul(a, b.shared)
    if isinstance(a, MaskedWeight):  # W @ x = (x^T @ W^T)^T
        if not _is_secret(b):
            return _matmul(a.shared, b)
        return masked_matmul(b.transpose(-2, -1), a.t()).transpose(-2, -1)
    if _is_secret(a):
        return a.matmul(b)
    return b.transpose(-2, -1).matmul(a.transpose(-2, -1)).transpose(-2, -1)  # (B^T A^T)^T


def _where(condition, a, b):
    """where(condition, a, b) with a public condition: the secret branch selects, the public one fills."""
    if _is_secret(condition):
        raise AeroError("where() with a secret condition is not supported (masks must be public)")
    condition = condition.bool()
    if _is_secret(a):
        return a.where(condition, safe_public_constant(b))
    if _is_secret(b):
        return b.where(~condition, safe_public_constant(a))
    return torch.where(condition, a, b)


# -- lowerings keyed by OpKind (the node's own kind, per ops.classify_node) ---------------------------

def _lower_linear(ctx, node, args, kwargs):
    name = target_name(node)
    if name == "linear":
        x, weight, bias = args[0], args[1], arg(args, kwargs, 2, "bias")
        out = _matmul(x, weight.t() if not _is_secret(weight) else weight.transpose(0, 1))
        return _add(out, bias) if bias is not None else out
    if name == "addmm":
        return _add(_matmul(args[1], args[2]), args[0])
    return _matmul(args[0], args[1])


def _lower_embedding(ctx, node, args, kwargs):
    weight, one_hot = args[0], args[1]
    if node.args[1] not in ctx.token_nodes:
        raise AeroError(f"embedding '{node.name}' indexes secret values other than the token ids")
    return _matmul(one_hot, weight)  # one_hot(ids) @ table: a lookup without revealing ids


def _lower_softmax(ctx, node, args, kwargs):
    if is_log_softmax(node):
        return args[0].log_softmax(arg(args, kwargs, 1, "dim"))
    return protocols.softmax(args[0], arg(args, kwargs, 1, "dim"))


def _lower_layer_norm(ctx, node, args, kwargs):
    x, shape = args[0], args[1]
    weight, bias = arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")
    eps = arg(args, kwargs, 4, "eps", 1e-5)
    out = protocols.layer_norm(x, shape, weight, bias, eps, scale=ctx.inv_sqrt_scale(node))
    return (out, None, None) if target_name(node) == "native_layer_norm" else out


def _lower_rms_norm(ctx, node, args, kwargs):
    eps = arg(args, kwargs, 3, "eps")
    return protocols.rms_norm(args[0], args[1], arg(args, kwargs, 2, "weight"), 1e-6 if eps is None else eps,
                              scale=ctx.inv_sqrt_scale(node))


def _lower_division(ctx, node, args, kwargs):
    """reciprocal(b) and a / b; a divisor only the owner knows arrives inverted (``lowering.owner_shares``)."""
    inverse = ctx.owner_inverse(node)
    if inverse is not None:
        return _mul(args[0], inverse)
    return args[0].reciprocal() if target_name(node) == "reciprocal" else _div(args[0], args[1])


def _lower_rsqrt(ctx, node, args, kwargs):
    # standalone or inside a Python-written norm (Llama's RMSNorm)
    inverse = protocols.inv_sqrt(args[0], ctx.inv_sqrt_scale(node))
    return inverse if target_name(node) == "rsqrt" else args[0] * inverse  # sqrt(x) = x / sqrt(x)


def _unary(method):
    return lambda ctx, node, args, kwargs: getattr(args[0], method)()


KIND_LOWERINGS = {
    OpKind.NOOP: lower_noop,
    OpKind.LINEAR: _lower_linear,
    OpKind.MATMUL: lambda ctx, node, args, kwargs: _matmul(args[0], args[1]),
    OpKind.EMBEDDING: _lower_embedding,
    OpKind.MUL: lambda ctx, node, args, kwargs: _mul(args[0], args[1]),
    OpKind.DIV: _lower_division,
    OpKind.RSQRT: _lower_rsqrt,
    OpKind.SOFTMAX: _lower_softmax,
    OpKind.LAYERNORM: _lower_layer_norm,
    OpKind.RMSNORM: _lower_rms_norm,
    OpKind.GELU: lambda ctx, node, args, kwargs: protocols.gelu_tanh(args[0]),
    OpKind.RELU: lambda ctx, node, args, kwargs: protocols.relu(args[0]),
    OpKind.SILU: lambda ctx, node, args, kwargs: protocols.silu(args[0]),
    OpKind.TANH: _unary("tanh"),
    OpKind.SIGMOID: _unary("sigmoid"),
    OpKind.EXP: _unary("exp"),
    OpKind.LOG: _unary("log"),
    OpKind.ERF: _unary("erf"),
}


# -- lowerings keyed by operator name (structural, local, and region-internal nodes) ------------------

def _slice(x, dim=0, start=None, end=None, step=1):
    index = [slice(None)] * (dim % x.dim()) + [slice(start, end, step)]
    return x[tuple(index)]


def _pow(x, exponent):
    if _is_secret(exponent):
        raise AeroError("pow with a secret exponent is not supported")
    return x.square() if exponent == 2 else x.pow(exponent)


def _index_select(x, dim, index):
    """x.index_select(dim, index) with public indices (a head subset): local on shares."""
    if _is_secret(index):
        raise AeroError("index_select with secret indices is not supported (indices must be public)")
    return x.index_select(dim, index.long())


def _cat(tensors, dim=0):
    if not all(_is_secret(t) for t in tensors):
        raise AeroError("cat of secret and public tensors is not supported")
    import crypten

    return crypten.cat(list(tensors), dim=dim)


def _reduction(method: str):
    """aten's mean/sum over a list of dims, as CrypTensors reduce one dim at a time (highest first)."""

    def reduce(x, dim=None, keepdim=False, **_):
        if dim is None:
            return getattr(x, method)()
        for d in sorted((dim if isinstance(dim, (list, tuple)) else [dim]), reverse=True):
            x = getattr(x, method)(d, keepdim=keepdim)
        return x

    return reduce


_mean, _sum = _reduction("mean"), _reduction("sum")


def _amax(x, dim=(), keepdim=False):
    """aten.amax: the max over each listed dim (all dims when none), as CrypTen's log-reduction max."""
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    if not dims:
        return x.max()
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = x.max(d, keepdim=keepdim)[0]
    return x


def _compare(method: str, mirrored: str):
    """A comparison with the secret operand on the left: ``public > secret`` is ``secret < public``."""

    def compare(a, b):
        return getattr(a, method)(b) if _is_secret(a) else getattr(b, mirrored)(a)

    return compare


def _masked_fill(x, mask, value):
    return _where(mask, safe_public_constant(value), x) if not _is_secret(x) else x.where(~mask.bool(), safe_public_constant(value))


def _view(x, *shape):
    return x.view(*view_sizes(shape))


def _reshape(x, *shape):
    return x.reshape(*view_sizes(shape))


def _expand(x, *shape):
    return x.expand(*view_sizes(shape))


NODE_LOWERINGS = {
    # reshapes, views and selections: local on shares
    "view": _view, "_unsafe_view": _view, "reshape": _reshape, "expand": _expand,
    "transpose": lambda x, a, b: x.transpose(a, b), "t": lambda x: x.t(),
    "permute": lambda x, *dims: x.permute(*(dims[0] if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims)),
    "unsqueeze": lambda x, dim: x.unsqueeze(dim), "squeeze": lambda x, *dim: x.squeeze(*dim),
    "flatten": lambda x, start=0, end=-1: x.flatten(start, end),
    "split": lambda x, size, dim=0: x.split(size, dim), "split_with_sizes": lambda x, sizes, dim=0: x.split(sizes, dim),
    "chunk": lambda x, chunks, dim=0: x.split(-(-x.size(dim) // chunks), dim),
    "getitem": operator.getitem, "slice": _slice, "select": lambda x, dim, i: x.select(dim, i) if hasattr(x, "select") else _slice(x, dim, i, i + 1).squeeze(dim),
    "cat": _cat, "concat": _cat, "index_select": _index_select, "narrow": lambda x, dim, start, length: x.narrow(dim, start, length),
    # local arithmetic (secret +/- public or secret, scaling by public)
    "add": _add, "iadd": _add, "sub": _sub, "isub": _sub, "rsub": lambda a, b: _sub(b, a),
    "neg": lambda x: -x, "mul": _mul, "multiply": _mul, "div": _div, "truediv": _div,
    "mean": _mean, "sum": _sum, "masked_fill": _masked_fill, "where": _where,
    # elementwise math inside regions (HF NewGELU, LlamaRMSNorm, ...)
    "pow": _pow, "square": lambda x: x.square(),
    "reciprocal": lambda x: x.reciprocal(), "tanh": lambda x: x.tanh(), "sigmoid": lambda x: x.sigmoid(),
    "exp": lambda x: x.exp(), "relu": protocols.relu, "gelu": lambda x, **k: protocols.gelu_tanh(x),
    "silu": protocols.silu, "softmax": lambda x, dim, *a, **k: protocols.softmax(x, dim),
    # secure comparisons and max (CrypTen's own protocols); sin/cos (rotary tables are public, but a
    # secret angle is not impossible)
    "amax": _amax, "gt": _compare("gt", "lt"), "lt": _compare("lt", "gt"), "ge": _compare("ge", "le"),
    "le": _compare("le", "ge"), "cos": lambda x: x.cos(), "sin": lambda x: x.sin(),
}


def _arguments(ctx, node: fx.Node, kind: OpKind):
    """A node's args and kwargs as CrypTen sees them: a weight masked once per model stands for itself
    where a fixed-weight product reads it (``weight_masks.py``), and a generation's K/V cache, masked
    row by row, where an attention product reads it (``cache_masks.py``)."""
    operand = ctx.product_operand if kind in FIXED_WEIGHT_PRODUCTS else ctx.value
    args, kwargs = fx.node.map_arg(node.args, operand), fx.node.map_arg(node.kwargs, operand)
    cached = ctx.cache_factor(node, args) if kind is OpKind.MATMUL and hasattr(ctx, "cache_factor") else None
    if cached is not None:
        index, factor = cached
        args = tuple(factor if i == index else value for i, value in enumerate(args))
    return args, kwargs


TABLE = DispatchTable(engine="CrypTen", source="targets/crypten/dispatch.py", kind_lowerings=KIND_LOWERINGS,
                      node_lowerings=NODE_LOWERINGS, arguments=_arguments)


lower_node = TABLE.lower  # (ctx, node) -> the value of one secret node, its arguments already in ctx
