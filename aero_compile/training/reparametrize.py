"""Normalization that costs nothing at inference: weight or spectral normalization of the linear layers
that read a removed norm (``remove-layernorm{replace=weight-norm|spectral-norm}``).

Training: ``reparametrize(gm)`` gives each such linear a weight computed from its original weight V
(the same parameter, the direction) and a new learnable scale:

- weight-norm: W = g * V / ||V|| per output feature (Salimans & Kingma), g starts at ||V||;
- spectral-norm: W = s * V / sigma(V), sigma estimated by one power iteration per training forward
  (Miyato et al.; the vector u is a buffer, so a checkpoint resumes it exactly), s starts at sigma(V).

Both start equal to the original weight. The reparametrization is a node in the graph (a call of
``weight_norm_weight`` / ``spectral_norm_weight`` on weights only), so it survives torch.compile and
checkpoints. Export: ``fold_reparametrizations(gm)`` evaluates each such node once and puts back a plain
weight: the graph is then exactly plain remove-layernorm's (same ops, same cost).
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..capturing import remove_dead_code
from ..ops import OpKind, attr_value, classify_graph, classify_node, target_name
from ..passes._rewrite import add_parameter
from ..passes.remove_layernorm import REPLACEMENT_KEY

POWER_ITERATIONS_AT_START = 20  # sigma's first estimate; then one iteration per training forward
_EPS = 1e-12


def weight_norm_weight(v: torch.Tensor, g: torch.Tensor, dim: int) -> torch.Tensor:
    """g * v / ||v||, the norm taken over ``dim`` (the input features): one gain per output feature."""
    return v * (g / v.norm(dim=dim, keepdim=True).clamp_min(_EPS))


def _sigma(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """u^T V x with x = normalize(V^T u): the power-iteration estimate of V's largest singular value."""
    with torch.no_grad():
        x = F.normalize(v.t().mv(u), dim=0, eps=_EPS)
    return torch.dot(u, v.mv(x))


def spectral_norm_weight(v: torch.Tensor, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """s * v / sigma(v); while gradients are on (training), one power-iteration step updates u first."""
    if torch.is_grad_enabled():
        with torch.no_grad():
            x = F.normalize(v.t().mv(u), dim=0, eps=_EPS)
            u.copy_(F.normalize(v.mv(x), dim=0, eps=_EPS))
    return v * (s / _sigma(v, u))


_REPARAMETRIZATIONS = (weight_norm_weight, spectral_norm_weight)


def _tagged_stream(node: fx.Node, gm: fx.GraphModule) -> str | None:
    """The replacement tag of the stream a linear reads, seen through views."""
    while isinstance(node, fx.Node):
        if REPLACEMENT_KEY in node.meta:
            return node.meta[REPLACEMENT_KEY]
        if node.op != "call_function" or classify_node(gm, node) not in (OpKind.RESHAPE, OpKind.NOOP) or not node.args:
            return None
        node = node.args[0]
    return None


def _weight_of(node: fx.Node) -> tuple[fx.Node, int] | None:
    """The get_attr weight of an aten.linear (weight [out, in]: input dim 1) or addmm (W [in, out]: dim 0)."""
    name = target_name(node)
    if name == "linear" and len(node.args) > 1:
        weight, in_dim = node.args[1], 1
    elif name == "addmm" and len(node.args) > 2 and not node.kwargs:
        weight, in_dim = node.args[2], 0
    else:
        return None
    return (weight, in_dim) if isinstance(weight, fx.Node) and weight.op == "get_attr" else None


def reparametrize(gm: fx.GraphModule) -> list[dict]:
    """Reparametrize, in place, every linear reading a tagged stream; returns what was done (for metrics).

    A weight another node also reads (an lm_head tied to the embedding) is left as it is: its folded
    value would no longer equal the embedding, untying them.
    """
    done = []
    for op in classify_graph(gm):
        if op.kind is not OpKind.LINEAR or op.is_region or not op.inputs:
            continue
        mode = _tagged_stream(op.inputs[0], gm)
        found = _weight_of(op.output) if mode else None
        if found is None:
            continue
        weight_node, in_dim = found
        target = str(weight_node.target)
        shared = len(weight_node.users) > 1 or any(
            n is not weight_node and n.op == "get_attr" and str(n.target) == target for n in gm.graph.nodes)
        if shared:
            done.append({"weight": target, "mode": "none (tied weight, left as is)"})
            continue
        v = attr_value(gm, weight_node).detach()
        stem = target.replace(".", "_")
        graph = gm.graph
        with graph.inserting_after(weight_node):
            if mode == "weight-norm":
                g = add_parameter(gm, f"{stem}_gain", v.norm(dim=in_dim, keepdim=True))
                scale_node = graph.get_attr(g)
                with graph.inserting_after(scale_node):
                    new_weight = graph.call_function(weight_norm_weight, (weight_node, scale_node, in_dim))
            else:
                u = F.normalize(torch.randn(v.shape[0], generator=torch.Generator().manual_seed(0)), dim=0)
                for _ in range(POWER_ITERATIONS_AT_START):
                    u = F.normalize(v.mv(F.normalize(v.t().mv(u), dim=0)), dim=0)
                s = add_parameter(gm, f"{stem}_sigma_scale", _sigma(v, u).reshape(()))
                u_name = f"{stem}_sigma_u"
                gm.register_buffer(u_name, u.clone())
                scale_node = graph.get_attr(s)
                with graph.inserting_after(scale_node):
                    u_node = graph.get_attr(u_name)
                with graph.inserting_after(u_node):
                    new_weight = graph.call_function(spectral_norm_weight, (weight_node, scale_node, u_node))
        op.output.replace_input_with(weight_node, new_weight)
        done.append({"weight": target, "mode": mode, "linear": op.output.name})
    if done:
        gm.recompile()
    return done


@torch.no_grad()
def fold_reparametrizations(gm: fx.GraphModule) -> int:
    """Evaluate each reparametrized weight once and read a plain weight instead (in place; call on a copy).

    The folded value replaces the direction parameter V under its own name (a new tensor: the training
    graph's tensors are not written), and the scales and power-iteration vectors go.
    """
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _REPARAMETRIZATIONS:
            continue
        args = [attr_value(gm, a) if isinstance(a, fx.Node) else a for a in node.args]
        value = node.target(*args)  # no_grad: the power iteration does not move u
        weight_node = node.args[0]
        owner_path, _, attr = str(weight_node.target).rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        setattr(owner, attr, torch.nn.Parameter(value.detach().clone()))
        node.replace_all_uses_with(weight_node)
        gm.graph.erase_node(node)
        folded += 1
    if folded:
        remove_dead_code(gm)
    return folded


def has_reparametrizations(gm: fx.GraphModule) -> bool:
    return any(node.op == "call_function" and node.target in _REPARAMETRIZATIONS for node in gm.graph.nodes)
