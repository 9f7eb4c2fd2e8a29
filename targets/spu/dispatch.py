"""Dispatch tables: how each secret node becomes jax.numpy operations (which SPU compiles to its protocols).

``lower_node(ctx, node)`` is the shared walk of ``targets/private/dispatch.py`` over this file's tables:
a kind with its own protocol goes through ``KIND_LOWERINGS``; structural and local ops and the nodes
inside Python-written regions through ``NODE_LOWERINGS``, keyed by ``ops.target_name``. An op with
none is a one-line AeroError naming the node. Arguments are traced jax values (secret, or the
owner's) or numpy arrays and Python numbers (public: SPU compiles them as public constants, so
public x secret stays local, as the secrecy rule prices it).

Every GELU (exact or tanh) runs in its tanh form, as under CrypTen: SPU has no erf protocol of its own.
"""

from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
import torch.fx as fx

from aero_compile.errors import AeroError
from aero_compile.ops import OpKind, classify_node, is_log_softmax, target_name
from aero_compile.targets.private.dispatch import DispatchTable, arg, lower_noop, view_sizes
from aero_compile.targets.private.masks import replace_masks

from .config import SPU_MASK_VALUE


def _dims(dim) -> tuple[int, ...] | None:
    if dim is None or (isinstance(dim, (list, tuple)) and not dim):
        return None
    return tuple(dim) if isinstance(dim, (list, tuple)) else (dim,)


# -- by OpKind ----------------------------------------------------------------------------------------

def _linear(ctx, node, args, kwargs):
    name = target_name(node)
    if name == "linear":
        x, weight, bias = args[0], args[1], arg(args, kwargs, 2, "bias")
        out = jnp.matmul(x, jnp.swapaxes(weight, -1, -2))
        return out + bias if bias is not None else out
    if name == "addmm":
        return args[0] + jnp.matmul(args[1], args[2])
    return jnp.matmul(args[0], args[1])


def _embedding(ctx, node, args, kwargs):
    if node.args[1] not in ctx.token_nodes:
        raise AeroError(f"embedding '{node.name}' indexes secret values other than the token ids")
    return jnp.matmul(args[1], args[0])  # one_hot(ids) @ table: a lookup without revealing the ids


def _softmax(ctx, node, args, kwargs):
    dim = arg(args, kwargs, 1, "dim")
    return jax.nn.log_softmax(args[0], axis=dim) if is_log_softmax(node) else jax.nn.softmax(args[0], axis=dim)


def _layer_norm(ctx, node, args, kwargs):
    x, shape = args[0], args[1]
    weight, bias = arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")
    eps = arg(args, kwargs, 4, "eps", 1e-5)
    axes = tuple(range(-len(shape), 0)) if isinstance(shape, (list, tuple)) else (-1,)
    scale = ctx.inv_sqrt_scale(node)  # public: norm(x) = norm(sqrt(s) x) with eps * s (norm_scaling)
    centered = (x - jnp.mean(x, axis=axes, keepdims=True)) * math.sqrt(scale)
    out = centered * jax.lax.rsqrt(jnp.mean(centered * centered, axis=axes, keepdims=True) + eps * scale)
    out = out * weight if weight is not None else out
    out = out + bias if bias is not None else out
    return (out, None, None) if target_name(node) == "native_layer_norm" else out


def _rms_norm(ctx, node, args, kwargs):
    x, shape, weight = args[0], args[1], arg(args, kwargs, 2, "weight")
    eps = arg(args, kwargs, 3, "eps")
    axes = tuple(range(-len(shape), 0)) if isinstance(shape, (list, tuple)) else (-1,)
    scale = ctx.inv_sqrt_scale(node)
    x = x * math.sqrt(scale)
    out = x * jax.lax.rsqrt(jnp.mean(x * x, axis=axes, keepdims=True) + (1e-6 if eps is None else eps) * scale)
    return out * weight if weight is not None else out


def _division(ctx, node, args, kwargs):
    """reciprocal(b) and a / b; a divisor only the owner knows arrives inverted (``private.graph.owner_shares``)."""
    inverse = ctx.owner_inverse(node)
    if inverse is not None:
        return args[0] * inverse
    return 1.0 / args[0] if target_name(node) == "reciprocal" else args[0] / args[1]


def _rsqrt(ctx, node, args, kwargs):
    scale = ctx.inv_sqrt_scale(node)  # rsqrt(x) = sqrt(s) rsqrt(s x): s public (norm_scaling)
    inverse = jax.lax.rsqrt(args[0] * scale) * math.sqrt(scale)
    return inverse if target_name(node) == "rsqrt" else args[0] * inverse


def gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def _silu(x):
    return x * jax.nn.sigmoid(x)


def _unary(function):
    return lambda ctx, node, args, kwargs: function(args[0])


KIND_LOWERINGS = {
    OpKind.NOOP: lower_noop,
    OpKind.LINEAR: _linear,
    OpKind.MATMUL: lambda ctx, node, args, kwargs: jnp.matmul(args[0], args[1]),
    OpKind.EMBEDDING: _embedding,
    OpKind.MUL: lambda ctx, node, args, kwargs: args[0] * args[1],
    OpKind.DIV: _division,
    OpKind.RSQRT: _rsqrt,
    OpKind.SOFTMAX: _softmax,
    OpKind.LAYERNORM: _layer_norm,
    OpKind.RMSNORM: _rms_norm,
    OpKind.GELU: _unary(gelu_tanh),
    OpKind.RELU: _unary(jax.nn.relu),
    OpKind.SILU: _unary(_silu),
    OpKind.TANH: _unary(jnp.tanh),
    OpKind.SIGMOID: _unary(jax.nn.sigmoid),
    OpKind.EXP: _unary(jnp.exp),
    OpKind.LOG: _unary(jnp.log),
}


# -- by operator name ---------------------------------------------------------------------------------

def _slice(x, dim=0, start=None, end=None, step=1):
    dim = dim % x.ndim
    size = x.shape[dim]
    start = 0 if start is None else max(min(start if start >= 0 else start + size, size), 0)
    end = size if end is None else max(min(end if end >= 0 else end + size, size), 0)
    return jax.lax.slice_in_dim(x, start, max(end, start), step or 1, axis=dim)


def _split(x, size, dim=0):
    total = x.shape[dim]
    sizes = [size] * (total // size) + ([total % size] if total % size else []) if isinstance(size, int) else size
    return _split_with_sizes(x, sizes, dim)


def _split_with_sizes(x, sizes, dim=0):
    bounds = np.cumsum([0, *sizes])
    return [jax.lax.slice_in_dim(x, int(a), int(b), axis=dim) for a, b in zip(bounds[:-1], bounds[1:])]


def _expand(x, *shape):
    shape = view_sizes(shape)
    offset = len(shape) - x.ndim
    target = [x.shape[i - offset] if s == -1 else s for i, s in enumerate(shape)]
    return jnp.broadcast_to(x, target)


def _reduction(function):
    def reduce(x, dim=None, keepdim=False, **_):
        return function(x, axis=_dims(dim), keepdims=keepdim)
    return reduce


def _squeeze(x, *dim):
    dims = _dims(dim[0] if len(dim) == 1 else dim) if dim else None
    return jnp.squeeze(x, axis=tuple(d for d in dims if x.shape[d] == 1) if dims else None)


def _masked_fill(x, mask, value):
    return jnp.where(mask, value, x)


def _pow(x, exponent):
    if not isinstance(exponent, (int, float)):
        raise AeroError("pow with a secret or tensor exponent is not supported")
    return x * x if exponent == 2 else x ** exponent


def _index_select(x, dim, index):
    if not isinstance(index, np.ndarray):
        raise AeroError("index_select with secret indices is not supported (indices must be public)")
    return jnp.take(x, index.astype(np.int64), axis=dim)


NODE_LOWERINGS = {
    # reshapes, views and selections: local on shares
    "view": lambda x, *s: jnp.reshape(x, view_sizes(s)), "_unsafe_view": lambda x, *s: jnp.reshape(x, view_sizes(s)),
    "reshape": lambda x, *s: jnp.reshape(x, view_sizes(s)), "expand": _expand,
    "transpose": lambda x, a, b: jnp.swapaxes(x, a, b), "t": lambda x: jnp.swapaxes(x, -1, -2),
    "permute": lambda x, *dims: jnp.transpose(x, view_sizes(dims)),
    "unsqueeze": lambda x, dim: jnp.expand_dims(x, dim), "squeeze": _squeeze,
    "flatten": lambda x, start=0, end=-1: jnp.reshape(x, (*x.shape[:start % x.ndim], -1, *x.shape[(end % x.ndim) + 1:])),
    "split": _split, "split_with_sizes": _split_with_sizes,
    "chunk": lambda x, chunks, dim=0: _split(x, -(-x.shape[dim] // chunks), dim),
    "getitem": operator.getitem, "slice": _slice,
    "select": lambda x, dim, i: jnp.take(x, i, axis=dim),
    "cat": lambda tensors, dim=0: jnp.concatenate(list(tensors), axis=dim), "index_select": _index_select,
    "narrow": lambda x, dim, start, length: jax.lax.slice_in_dim(x, start, start + length, axis=dim),
    "contiguous": lambda x, *a, **k: x, "clone": lambda x, *a, **k: x,
    # local arithmetic
    "add": lambda a, b, alpha=1: a + b * alpha, "iadd": operator.add, "sub": lambda a, b, alpha=1: a - b * alpha,
    "isub": operator.sub, "rsub": lambda a, b, alpha=1: b - a * alpha, "neg": operator.neg, "mul": operator.mul,
    "multiply": operator.mul, "div": operator.truediv, "truediv": operator.truediv,
    "mean": _reduction(jnp.mean), "sum": _reduction(jnp.sum), "masked_fill": _masked_fill,
    "where": lambda c, a, b: jnp.where(c, a, b),
    # elementwise math inside regions (HF NewGELU, LlamaRMSNorm, ...)
    "pow": _pow, "square": lambda x: x * x, "reciprocal": lambda x: 1.0 / x, "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid, "exp": jnp.exp, "relu": jax.nn.relu, "gelu": lambda x, **k: gelu_tanh(x),
    "silu": _silu, "softmax": lambda x, dim, *a, **k: jax.nn.softmax(x, axis=dim),
    "amax": lambda x, dim=(), keepdim=False: jnp.max(x, axis=_dims(dim), keepdims=keepdim),
    "gt": operator.gt, "lt": operator.lt, "ge": operator.ge, "le": operator.le, "cos": jnp.cos, "sin": jnp.sin,
}


def _arguments(ctx, node: fx.Node, kind: OpKind):
    """A node's args and kwargs as jax sees them; a literal mask (``masked_fill(x, m, -1e4)``) as SPU's finite mask."""
    return fx.node.map_aggregate((node.args, node.kwargs), lambda arg: ctx.value(arg) if isinstance(arg, fx.Node)
                                 else replace_masks(arg, SPU_MASK_VALUE))


TABLE = DispatchTable(engine="SPU", source="targets/spu/dispatch.py", kind_lowerings=KIND_LOWERINGS,
                      node_lowerings=NODE_LOWERINGS, arguments=_arguments)


lower_node = TABLE.lower  # (ctx, node) -> the value of one secret node, its arguments already in ctx
