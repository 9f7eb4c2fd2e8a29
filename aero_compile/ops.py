"""The one op classifier: what is this node (or group of nodes) in MPC terms?

Every component (passes, cost analyzer, CrypTen lowering, reports) asks this module; nobody else
matches op names. Two levels:

* a single node is classified by its target (aten overload, torch function, ``operator`` function,
  tensor method or ``nn.Module`` class), refined by its arguments where that matters (``mul`` of two
  tensors is a secret product, ``mul`` by a Python number is free);
* a *region* is a set of nodes that together are one operator written in Python, e.g. Hugging Face's
  ``NewGELUActivation`` (pow/tanh/mul) or ``LlamaRMSNorm`` (pow/mean/rsqrt). Export records the module
  each node came from in ``node.meta["nn_module_stack"]``; nodes under one module whose class name says
  "GELU", "RMSNorm", ... form one region and are reported, rewritten and costed as that operator.

``classify_graph(gm)`` returns the graph as a list of ``Op`` in execution order, regions collapsed.
Questions about groups of ops (FFN sub-blocks, attention softmaxes, a linear layer's weight) are
answered in ``blocks.py`` from what this module says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.fx as fx


MASK_VALUE = -1e4  # the finite "minus infinity" of masked attention scores (MPC has no -inf)


class OpKind(str, Enum):
    """What an operation is under MPC. Values are the lower-case keys used in reports."""

    # The nonlinearities the AERO passes target.
    LAYERNORM = "layernorm"
    RMSNORM = "rmsnorm"
    GELU = "gelu"
    RELU = "relu"
    SILU = "silu"
    SOFTMAX = "softmax"
    # Other nonlinear elementwise math (each a multi-round protocol when its input is secret).
    EXP = "exp"
    LOG = "log"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    ERF = "erf"
    TRIG = "trig"  # sin/cos: in decoders only on public positions (rotary tables)
    RSQRT = "rsqrt"  # rsqrt and sqrt
    DIV = "div"  # division by a tensor, reciprocal
    POW = "pow"
    MAX = "max"  # max/min reductions, argmax
    COMPARE = "compare"  # gt/lt/eq/..., clamp, abs, rounding, histograms
    GATHER = "gather"  # a selection by data-dependent indices (MoE dispatch: the rows top-k chose)
    # Linear algebra: one round of Beaver-triple multiplication when both operands are secret.
    LINEAR = "linear"  # activation x parameter matrix
    MATMUL = "matmul"  # activation x activation
    EMBEDDING = "embedding"
    MUL = "mul"  # elementwise product of two tensors
    # Local under additive secret sharing (no communication).
    ELEMENTWISE = "elementwise"  # add/sub/neg, scaling by a number, masking with public masks
    REDUCE = "reduce"  # sum/mean/cumsum: linear
    RESHAPE = "reshape"  # views, transposes, slices, concatenation
    NOOP = "noop"  # casts, clones, dropout in eval, metadata asserts
    CONSTANT = "constant"  # arange/ones/zeros/sym_size: public values built from shapes alone
    ATTENTION = "attention"  # fused scaled_dot_product_attention; canonicalize expands it
    UNKNOWN = "unknown"


NORMS = frozenset({OpKind.LAYERNORM, OpKind.RMSNORM})
ACTIVATIONS = frozenset({OpKind.GELU, OpKind.RELU, OpKind.SILU})
# Kinds that need a multi-round protocol when applied to secret data.
NONLINEAR = frozenset(
    {
        OpKind.LAYERNORM, OpKind.RMSNORM, OpKind.GELU, OpKind.RELU, OpKind.SILU, OpKind.SOFTMAX,
        OpKind.EXP, OpKind.LOG, OpKind.TANH, OpKind.SIGMOID, OpKind.ERF, OpKind.TRIG, OpKind.RSQRT,
        OpKind.DIV, OpKind.POW, OpKind.MAX, OpKind.COMPARE, OpKind.ATTENTION, OpKind.GATHER,
    }
)

# Operator names (aten overload packet, torch function, operator function or tensor method name) to kind.
_KIND_BY_NAME: dict[str, OpKind] = {}


def _names(kind: OpKind, *names: str) -> None:
    for name in names:
        _KIND_BY_NAME[name] = kind


_names(OpKind.LAYERNORM, "layer_norm", "native_layer_norm")
_names(OpKind.RMSNORM, "rms_norm")
_names(OpKind.GELU, "gelu")
_names(OpKind.RELU, "relu", "relu_", "leaky_relu", "prelu", "_prelu_kernel", "rrelu")
_names(OpKind.SILU, "silu", "silu_")
_names(OpKind.SOFTMAX, "softmax", "_softmax", "_safe_softmax", "log_softmax", "_log_softmax")
_names(OpKind.EXP, "exp", "exp2", "expm1", "softplus", "elu", "celu", "selu")
_names(OpKind.LOG, "log", "log2", "log10", "log1p", "logsumexp", "log_sigmoid", "log_sigmoid_forward", "logsigmoid")
_names(OpKind.TANH, "tanh", "mish")
_names(OpKind.SIGMOID, "sigmoid")
_names(OpKind.ERF, "erf", "erfc", "erfinv")
_names(OpKind.TRIG, "sin", "cos", "tan", "atan", "atan2", "asin", "acos", "sinh", "cosh", "polar")
_names(OpKind.RSQRT, "rsqrt", "sqrt", "norm", "linalg_vector_norm", "std", "std_mean")
_names(OpKind.DIV, "reciprocal")
_names(OpKind.POW, "pow", "square", "var", "var_mean")
_names(OpKind.MAX, "max", "amax", "min", "amin", "argmax", "argmin", "maximum", "minimum", "topk", "sort",
       "argsort", "msort", "kthvalue", "cummax", "cummin", "aminmax")
_names(
    OpKind.COMPARE,
    "gt", "lt", "ge", "le", "eq", "ne", "clamp", "clamp_min", "clamp_max", "clip", "abs", "sign",
    "hardtanh", "relu6", "hardsigmoid", "hardswish", "floor", "ceil", "round", "trunc", "frac",
    "floor_divide", "remainder", "fmod", "histc", "bincount", "bucketize", "searchsorted", "one_hot",
    "isin", "isnan", "isinf", "isfinite", "logical_xor", "bitwise_xor", "xor", "signbit", "heaviside",
)
_names(OpKind.LINEAR, "linear")
_names(OpKind.ATTENTION, "scaled_dot_product_attention")
_names(OpKind.MATMUL, "matmul", "bmm", "baddbmm", "einsum", "mm", "addmm", "addbmm", "addmv", "mv", "dot",
       "vdot", "tensordot", "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d")
_names(OpKind.EMBEDDING, "embedding")
_names(OpKind.MUL, "mul", "multiply", "addcmul", "lerp", "prod", "cumprod", "outer")
_names(
    OpKind.ELEMENTWISE,
    "add", "sub", "rsub", "neg", "iadd", "isub", "truediv", "div", "floordiv", "where", "masked_fill",
    "tril", "triu", "__and__", "__or__", "__invert__", "bitwise_and", "bitwise_or", "bitwise_not",
    "logical_and", "logical_or", "logical_not", "and_", "or_", "invert", "diff", "addcdiv", "masked_fill_",
    "fill", "fill_", "zero", "zero_", "sub_", "add_", "neg_",
)
_names(OpKind.REDUCE, "sum", "mean", "cumsum")
_names(
    OpKind.RESHAPE,
    "view", "reshape", "_unsafe_view", "transpose", "t", "permute", "expand", "expand_as", "slice",
    "select", "unsqueeze", "squeeze", "flatten", "unflatten", "split", "split_with_sizes", "chunk",
    "cat", "concat", "concatenate", "stack", "narrow", "index", "index_select", "getitem", "repeat",
    "repeat_interleave", "unbind", "movedim", "as_strided", "gather", "roll", "flip", "size", "numpy_T",
    "index_put", "index_put_", "index_add", "index_add_", "index_copy", "scatter", "scatter_add", "scatter_reduce",
    "slice_scatter", "select_scatter", "diagonal", "tile", "expand_copy", "view_as", "swapaxes", "transpose_",
    "squeeze_", "unsqueeze_", "masked_select", "take_along_dim", "pad", "constant_pad_nd", "diag_embed", "diag",
    "view_as_real", "view_as_complex", "_unsafe_index", "unfold", "split_tensor", "hsplit", "vsplit", "tensor_split",
)
_names(
    OpKind.NOOP,
    "clone", "detach", "alias", "to", "_to_copy", "type_as", "float", "half", "bfloat16", "type",
    "dropout", "native_dropout", "feature_dropout", "lift_fresh_copy", "_assert_tensor_metadata",
    "_assert_scalar", "sym_constrain_range_for_size", "sym_constrain_range", "contiguous", "copy",
    "_assert_async", "dim", "contiguous_",
)
_names(
    OpKind.CONSTANT,
    "arange", "ones", "zeros", "full", "empty", "new_ones", "new_zeros", "new_full", "new_empty",
    "ones_like", "zeros_like", "full_like", "empty_like", "scalar_tensor", "sym_size", "sym_numel",
    "sym_stride", "_local_scalar_dense", "item", "tensor", "linspace", "logspace", "eye", "randn", "rand",
    "randint", "empty_strided", "new_tensor", "sym_max", "sym_min", "sym_not", "sym_float", "sym_int", "sym_ite",
    "sym_sum", "triu_indices", "tril_indices", "_check", "_check_is_size",
    # random numbers drawn in a forward pass (BigBird's random attention blocks): public, data-independent
    "uniform", "normal", "random", "randperm", "rand_like", "randn_like", "randint_like",
)

# Region (Python-written operator) recognition: innermost module class name -> kind.
_REGION_PATTERNS: list[tuple[re.Pattern, OpKind]] = [
    (re.compile(r"RMSNorm|RmsNorm"), OpKind.RMSNORM),
    (re.compile(r"LayerNorm|Layernorm"), OpKind.LAYERNORM),
    (re.compile(r"GELU|Gelu|GeLU"), OpKind.GELU),
    (re.compile(r"SiLU|Silu|Swish"), OpKind.SILU),
    (re.compile(r"ReLU|Relu"), OpKind.RELU),
    (re.compile(r"^Softmax$"), OpKind.SOFTMAX),
]

# Module classes met as call_module nodes when a model falls back to symbolic tracing.
_MODULE_KINDS: dict[type, OpKind] = {
    torch.nn.Linear: OpKind.LINEAR,
    torch.nn.LayerNorm: OpKind.LAYERNORM,
    torch.nn.GELU: OpKind.GELU,
    torch.nn.ReLU: OpKind.RELU,
    torch.nn.SiLU: OpKind.SILU,
    torch.nn.Softmax: OpKind.SOFTMAX,
    torch.nn.Embedding: OpKind.EMBEDDING,
    torch.nn.Dropout: OpKind.NOOP,
    torch.nn.Identity: OpKind.NOOP,
    torch.nn.Tanh: OpKind.TANH,
    torch.nn.Sigmoid: OpKind.SIGMOID,
}
if hasattr(torch.nn, "RMSNorm"):
    _MODULE_KINDS[torch.nn.RMSNorm] = OpKind.RMSNORM

def target_name(node: fx.Node) -> str:
    """The bare operator name of a node: ``aten.layer_norm.default`` -> ``layer_norm``."""
    target = node.target
    if node.op == "call_method":
        return str(target)
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target.__name__
    return getattr(target, "__name__", str(target))


def _is_tensor_arg(arg) -> bool:
    """A node argument that carries a tensor (not a Python number, shape or symbolic int)."""
    if not isinstance(arg, fx.Node):
        return False
    val = arg.meta.get("val")
    if val is not None:
        return isinstance(val, torch.Tensor)
    return arg.op in ("placeholder", "get_attr", "call_function", "call_module", "call_method")


TRANSPOSES = ("t", "transpose", "numpy_T")


def is_parameter(gm: fx.GraphModule, node) -> bool:
    """True for a get_attr node (a weight or buffer of the module), seen through views/transposes."""
    while isinstance(node, fx.Node) and node.op == "call_function" and target_name(node) in TRANSPOSES + ("permute", "view", "reshape", "to", "_to_copy"):
        node = node.args[0]
    return isinstance(node, fx.Node) and node.op == "get_attr"


def classify_node(gm: fx.GraphModule, node: fx.Node) -> OpKind:
    """The kind of one node on its own (regions are handled by ``classify_graph``)."""
    if node.op in ("placeholder", "output"):
        return OpKind.NOOP
    if node.op == "get_attr":
        return OpKind.CONSTANT
    if node.op == "call_module":
        if str(node.target).startswith("_guards"):
            return OpKind.NOOP  # export's input guard check: metadata, no computation
        module = gm.get_submodule(str(node.target))
        for cls, kind in _MODULE_KINDS.items():
            if isinstance(module, cls):
                return kind
        return _region_kind_of_class(type(module).__name__) or OpKind.UNKNOWN
    name = target_name(node)
    if name.endswith("_") and not name.startswith("_") and name not in _KIND_BY_NAME:
        name = name[:-1]  # in-place variant (Falcon's add_, div_): same operator
    kind = _KIND_BY_NAME.get(name)
    if kind is None:
        value = node.meta.get("val")
        if isinstance(value, (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool)):
            return OpKind.CONSTANT  # arithmetic on sizes (batch x sequence, a rounded length)
        return OpKind.UNKNOWN
    args = node.args
    if name in _SELECTIONS and _routed_indices(gm, node):
        return OpKind.GATHER
    if kind is OpKind.MUL or name in ("mul", "multiply"):
        # A product with a Python number or a one-element constant is a local scaling.
        return OpKind.MUL if len(args) >= 2 and _is_tensor_arg(args[0]) and _is_tensor_arg(args[1]) else OpKind.ELEMENTWISE
    if name in ("div", "truediv"):
        return OpKind.DIV if len(args) >= 2 and _is_tensor_arg(args[1]) else OpKind.ELEMENTWISE
    if name in ("max", "min") and len(args) >= 2 and not _is_tensor_arg(args[1]) and not isinstance(args[1], int):
        return OpKind.MAX
    if name in ("addmm", "mm", "matmul", "einsum"):
        weight = args[2] if name == "addmm" else (args[1] if len(args) > 1 else None)
        return OpKind.LINEAR if name != "einsum" and is_parameter(gm, weight) else OpKind.MATMUL
    if name == "pow" and len(args) >= 1 and not _is_tensor_arg(args[0]):
        return OpKind.EXP  # number ** tensor
    return kind


# Ops that pick elements by an index tensor: free when the indices are public (positions, a causal
# shift), a protocol of their own when a top-k/argmax/sort on the data chose them (MoE routing).
# Argument layouts a graph rewrite needs (which argument holds the output's sizes, or a dim's bounds), asked
# here like an OpKind so that no rewrite matches op names itself (generation's decode step uses them).
_SIZE_LIST_OPS = frozenset({"view", "reshape", "_unsafe_view", "expand", "new_ones", "new_zeros", "new_full",
                            "new_empty", "broadcast_to"})
_RANGE_OPS = frozenset({"slice", "narrow"})
_PLAIN_VIEWS = frozenset({"view", "reshape", "_unsafe_view"})


def takes_size_list(node: fx.Node) -> bool:
    """Whether the node's second argument lists its output's sizes, one per output dim (view, expand, new_*)."""
    return (target_name(node) in _SIZE_LIST_OPS and len(node.args) > 1
            and isinstance(node.args[1], (list, tuple)))


def is_plain_view(node: fx.Node) -> bool:
    """Whether the node only re-views its input's elements under new sizes (view, reshape), nothing else
    (no expand, no new tensor): what a consumer of token ids can turn into the same view of their one-hot."""
    return target_name(node) in _PLAIN_VIEWS


def takes_dim_range(node: fx.Node) -> bool:
    """Whether the node's arguments are (input, dim, bounds along that dim...) (slice, narrow)."""
    return target_name(node) in _RANGE_OPS and len(node.args) > 1


_SELECTIONS = frozenset({"index", "_unsafe_index", "index_select", "gather", "take_along_dim", "index_put",
                         "index_put_", "index_add", "index_add_", "scatter", "scatter_add", "scatter_reduce",
                         "index_copy", "embedding"})
_ROUTING = frozenset({"topk", "sort", "argsort", "argmax", "argmin", "max", "min", "kthvalue", "msort"})
_INDEX_PLUMBING = frozenset({OpKind.RESHAPE, OpKind.NOOP, OpKind.ELEMENTWISE, OpKind.COMPARE})


def _routed_indices(gm: fx.GraphModule, node: fx.Node, depth: int = 12) -> bool:
    """Whether the indices ``node`` selects with were chosen from the data (a top-k/sort/argmax feeds them
    through views, casts and integer arithmetic)."""
    frontier = [arg for arg in node.all_input_nodes if arg is not node.args[0]] if node.args else []
    seen: set[fx.Node] = set()
    for _ in range(depth):
        following = []
        for arg in frontier:
            if arg in seen or arg.op != "call_function":
                continue
            seen.add(arg)
            name = target_name(arg)
            if name in _ROUTING:
                return True
            if name == "getitem" or _KIND_BY_NAME.get(name) in _INDEX_PLUMBING:
                following.extend(arg.all_input_nodes)
        if not following:
            return False
        frontier = following
    return False


def _region_kind_of_class(class_name: str) -> OpKind | None:
    for pattern, kind in _REGION_PATTERNS:
        if pattern.search(class_name):
            return kind
    return None


def module_stack(node: fx.Node) -> list[tuple[str, str, str]]:
    """(key, module path, class name) from outermost to innermost, as recorded by export."""
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for key, value in stack.items():
        path, cls = value if isinstance(value, tuple) else (value, "")
        cls_name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1]
        out.append((key, str(path), cls_name))
    return out


_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_of(module_path: str) -> int | None:
    """The block index in a module path: ``model.transformer.h.3.mlp`` -> 3."""
    match = _LAYER.search(module_path or "")
    return int(match.group(1)) if match else None


def clean_module_path(path: str) -> str:
    # Export paths of a wrapped model start with the wrapper attribute; keep them as recorded but
    # drop the torch.export 'L__self__' style when a dotted path is not available.
    return path.replace("L['self'].", "")


@dataclass(eq=False)
class Op:
    """One operation: a single node, or a region of nodes that is one operator."""

    kind: OpKind
    nodes: list[fx.Node]
    output: fx.Node  # the node whose value the rest of the graph uses
    inputs: list[fx.Node] = field(default_factory=list)  # external tensor inputs (weights excluded)
    module_path: str = ""
    module_class: str = ""
    outputs: list[fx.Node] = field(default_factory=list)  # every node used outside the op

    @property
    def name(self) -> str:
        return self.output.name

    @property
    def layer(self) -> int | None:
        return layer_of(self.module_path)

    @property
    def is_region(self) -> bool:
        return len(self.nodes) > 1


def external_inputs(nodes: list[fx.Node]) -> list[fx.Node]:
    members = set(nodes)
    seen: dict[fx.Node, None] = {}
    for node in nodes:
        for arg in node.all_input_nodes:
            if arg not in members and arg.op != "get_attr" and _is_tensor_arg(arg):
                seen.setdefault(arg, None)
    return list(seen)


def external_outputs(nodes: list[fx.Node]) -> list[fx.Node]:
    """Tensor values used outside ``nodes`` (a shape computed inside and reused elsewhere is no output:
    export shares symbolic sizes such as batch x sequence between layers)."""
    members = set(nodes)
    return [n for n in nodes if any(user not in members for user in n.users) and _is_tensor_arg(n)]


def _connected_groups(nodes: list[fx.Node]) -> list[list[fx.Node]]:
    """Split nodes into groups connected by data edges (one module called twice gives two groups)."""
    parent = {n: n for n in nodes}

    def find(n):
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for node in nodes:
        for arg in node.all_input_nodes:
            if arg in parent:
                parent[find(arg)] = find(node)
    groups: dict[fx.Node, list[fx.Node]] = {}
    for node in nodes:
        groups.setdefault(find(node), []).append(node)
    return list(groups.values())


_NEVER_IN_REGIONS = frozenset({OpKind.LINEAR, OpKind.MATMUL, OpKind.EMBEDDING})


def _region_groups(gm: fx.GraphModule) -> list[tuple[OpKind, str, str, list[fx.Node]]]:
    """Python-written operators: nodes under one module whose class names a norm or activation."""
    by_key: dict[str, tuple[OpKind, str, str, list[fx.Node]]] = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        if classify_node(gm, node) in _NEVER_IN_REGIONS:
            continue  # a module named like a norm that holds a projection (a gated norm's MLP) is not one operator
        for key, path, cls in reversed(module_stack(node)):
            kind = _region_kind_of_class(cls)
            if kind is not None:
                by_key.setdefault(key, (kind, clean_module_path(path), cls, []))[3].append(node)
                break
    regions = []
    for kind, path, cls, nodes in by_key.values():
        for group in _connected_groups(nodes):
            # Metadata nodes (asserts, casts of constants) belong to no computation; keep only groups
            # that compute something from a tensor input.
            if external_inputs(group) or len(group) > 1:
                regions.append((kind, path, cls, group))
    return regions


def classify_graph(gm: fx.GraphModule) -> list[Op]:
    """The graph as a list of ``Op`` in execution order; Python-written norms/activations collapsed."""
    region_of: dict[fx.Node, Op] = {}
    for kind, path, cls, nodes in _region_groups(gm):
        outputs = external_outputs(nodes)
        if not outputs:
            continue  # dead region
        op = Op(kind=kind, nodes=nodes, output=outputs[-1], inputs=external_inputs(nodes),
                module_path=path, module_class=cls, outputs=outputs)
        for node in nodes:
            region_of[node] = op
    ops: list[Op] = []
    emitted: set[int] = set()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        region = region_of.get(node)
        if region is not None:
            # Emit a region where its output is computed, so consumers always follow it.
            if node is region.output and id(region) not in emitted:
                emitted.add(id(region))
                ops.append(region)
            continue
        stack = module_stack(node)
        path, cls = (stack[-1][1], stack[-1][2]) if stack else ("", "")
        ops.append(Op(kind=classify_node(gm, node), nodes=[node], output=node,
                      inputs=[a for a in node.all_input_nodes if a.op != "get_attr" and _is_tensor_arg(a)],
                      module_path=clean_module_path(path), module_class=cls, outputs=[node]))
    return ops


def attr_value(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    """The tensor a get_attr node refers to."""
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value


def is_tensor_add(node: fx.Node) -> bool:
    """An elementwise sum of two tensors (a residual connection, when one side is a sub-block)."""
    return (node.op in ("call_function", "call_method") and target_name(node) in ("add", "add_", "iadd")
            and len(node.args) >= 2 and _is_tensor_arg(node.args[0]) and _is_tensor_arg(node.args[1]))


def is_log_softmax(node: fx.Node) -> bool:
    """A SOFTMAX-kind node that returns log-probabilities (losses), not attention probabilities."""
    return node.op in ("call_function", "call_method") and target_name(node) in ("log_softmax", "_log_softmax")


def op_counts(ops: list[Op]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in ops:
        counts[op.kind.value] = counts.get(op.kind.value, 0) + 1
    return counts
