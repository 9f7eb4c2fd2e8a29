"""Graphs that pickle with everything the engines read from them, for parties that are not forked.

A GraphModule from torch.export does not pickle as it is (its tracer class and some metadata are
local objects, its aten operators are pybind objects), and fx's own pickling rebuilds the graph by
re-tracing its generated code, which renames and reorders nodes and drops every node's ``meta``: the
op classifier reads ``val`` (is it a tensor? a size?) and ``nn_module_stack`` (which module a node
came from). ``PortableGraphs`` pickles each graph node by node instead (name, op, target, arguments,
metadata; aten operators by their name; fake tensors as meta-device tensors of the same shape, dtype
and strides; a metadata value that still does not pickle is left out, none that a party reads), with
the tensors and submodules its nodes reach, and rebuilds the same graph on the other side::

    party_args = (PortableGraphs(graphs), ...)       # in the parent: pickles when the process starts
    graphs = portable.graphs                          # in the party: {"before": gm, ...}, as they were
"""

from __future__ import annotations

import io
import operator
import pickle

import torch
import torch.fx as fx
from torch.utils._pytree import tree_map, treespec_dumps, treespec_loads


def _aten(namespace: str, name: str, overload: str):
    return getattr(getattr(getattr(torch.ops, namespace), name), overload)


class _Pickler(pickle.Pickler):
    """pickle, with torch operators by name and tensors as what they are (fake ones as meta tensors)."""

    def reducer_override(self, obj):
        if isinstance(obj, torch._ops.OpOverload):
            namespace, name = obj._schema.name.split("::")
            return _aten, (namespace, name, obj._overloadname)
        return NotImplemented


def _dumps(value) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer).dump(value)
    return buffer.getvalue()


def _meta_tensor(leaf):
    if isinstance(leaf, torch.Tensor) and (leaf.device.type == "meta" or type(leaf) is not torch.Tensor):
        return torch.empty_strided(tuple(leaf.shape), tuple(leaf.stride()), dtype=leaf.dtype, device="meta")
    return leaf


def _portable_meta(meta: dict) -> dict:
    """The node's metadata that pickles (fake tensors made meta tensors); the rest is left out."""
    kept = {}
    for key, value in meta.items():
        try:
            value = tree_map(_meta_tensor, value)
            _dumps(value)
        except Exception:  # a local object, a symbolic size, a tracer: nothing a party reads
            continue
        kept[key] = value
    return kept


class _Ref(str):
    """A node argument that is another node (by name)."""


def _pack(gm: fx.GraphModule) -> bytes:
    nodes, reached = [], {}
    for node in gm.graph.nodes:
        if node.op in ("get_attr", "call_module"):
            reached[node.target] = operator.attrgetter(node.target)(gm)
        args = fx.node.map_arg(node.args, lambda n: _Ref(n.name))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: _Ref(n.name))
        nodes.append((node.name, node.op, node.target, args, kwargs, _portable_meta(node.meta)))
    return _dumps({"nodes": nodes, "reached": reached, "codegen": _codegen_state(gm.graph._codegen),
                   "meta": _portable_meta(gm.meta), "class_name": type(gm).__name__})


def _codegen_state(codegen):
    """The graph's codegen, its input/output tree specs as text: a pickled TreeSpec built by torch.export
    holds LeafSpec objects, and unpickling them makes torch warn (FutureWarning) in every party."""
    info = getattr(codegen, "pytree_info", None)
    if info is None:
        return ("plain", codegen)
    try:
        out_spec = None if info.out_spec is None else treespec_dumps(info.out_spec)
        in_spec = treespec_dumps(info.in_spec)
    except Exception:  # a node type pytree cannot write as text: pickled as it is (torch may warn)
        return ("plain", codegen)
    return ("pytree", type(codegen), list(info.orig_args), in_spec, out_spec)


def _codegen_from_state(state):
    if state[0] == "plain":
        return state[1]
    from torch.fx.graph import _PyTreeInfo

    _, kind, orig_args, in_spec, out_spec = state
    return kind(_PyTreeInfo(orig_args, treespec_loads(in_spec), None if out_spec is None else treespec_loads(out_spec)))


def _unpack(data: bytes) -> fx.GraphModule:
    packed = pickle.loads(data)  # written by our own parent process (PortableGraphs), never a user file
    graph, env = fx.Graph(), {}
    for name, op, target, args, kwargs, meta in packed["nodes"]:
        def resolve(value):
            return env[value] if isinstance(value, _Ref) else value
        args = tree_map(resolve, args)
        kwargs = tree_map(resolve, kwargs)
        node = graph.create_node(op, target, args, kwargs, name=name)
        if node.name != name:
            raise RuntimeError(f"internal: node '{name}' came back as '{node.name}'")
        node.meta.update(meta)
        env[name] = node
    graph._codegen = _codegen_from_state(packed["codegen"])
    gm = fx.GraphModule(packed["reached"], graph, class_name=packed["class_name"])
    gm.meta.update(packed["meta"])
    return gm


def _rebuild(packed: dict[str, bytes]) -> "PortableGraphs":
    return PortableGraphs({name: _unpack(data) for name, data in packed.items()})


class PortableGraphs:
    """{name: GraphModule} that survives pickling unchanged (see the module docstring)."""

    def __init__(self, graphs: dict[str, fx.GraphModule]):
        self.graphs = graphs
        self._packed: dict[str, bytes] | None = None

    def __reduce__(self):
        if self._packed is None:  # once, however many parties receive it
            self._packed = {name: _pack(gm) for name, gm in self.graphs.items()}
        return _rebuild, (self._packed,)
