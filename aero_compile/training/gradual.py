"""Gradual conversion: ``aero-compile train MODEL --passes P --gradual STEPS`` reaches P's form after STEPS steps.

The blending passes (``BLENDING_PASSES``) do not replace their ops at step 0: each rewrite keeps the old
op and feeds its users a blend whose mix ``a`` training moves from 0 (the model as it was) to 1 (the
pass's form). Per site kind:

* norms (Heimersheim 2024, "You can remove GPT2's LayerNorm by fine-tuning"): a LayerNorm's per-token
  divisor std(x) is first replaced by a running average of it (``freeze`` f: 0 -> 1 over the first
  quarter of the window, the average updated while f < 1), then the norm goes layer by layer to
  identity, one layer's norms after the other, the final norm last and slowest (half the rest):
  ``y = (x - (1-a) mean(x)) / d^(1-a) * ((1-a) g + a) + (1-a) b``, so at a = 1 centering, divisor,
  gain and bias are what remove-layernorm leaves (identity). The gain is blended, never folded into
  the next linear: GPT-2's final norm feeds a head tied to the embedding, which must stay tied.
  A norm written in Python (RMSNorm regions) is blended as ``(1-a) norm(x) + a x``.
* FFN activations and attention softmaxes: ``(1-a) old + a new`` (gelu -> identity or ReLU, softmax ->
  quad or ReLU attention), a linear in the steps over the whole window.

Other passes run at step 0 as usual; passes of the FOLD phase (fold-linear, fold-scales) run at export,
on the graph where every blend has been replaced by its new form (``finalize``): the exported model is
the pipeline's graph with the trained weights.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..capturing import remove_dead_code
from ..errors import AeroError
from ..ops import NORMS, Op, OpKind, attr_value, classify_node, target_name
from ..pass_manager import PASSES, PassManager, Phase, PipelineResult, expand_pipeline, order_by_phase
from ..passes._rewrite import add_buffer, blending, copy_meta
from ..passes.remove_layernorm import REPLACEMENT_KEY

BLENDING_PASSES = ("remove-layernorm", "gelu-to-identity", "gelu-to-relu", "softmax-to-quad", "softmax-to-relu")
GRADUAL_KEY = "aero_gradual"  # node.meta of a blend: {"kind": norm|activation|attention, "layer": int|None}
FREEZE_SHARE = 0.25  # of the window: the norms' divisors go from live std to the running average
FINAL_NORM_SHARE = 0.5  # of the removal window, for the final norm (see schedule)
EMA_MOMENTUM = 0.05  # of the running std, per training forward


def gradual_layer_norm(x, weight, bias, eps: float, sigma, state):
    """A LayerNorm over the last dim whose divisor is frozen (state[0]) and which fades to identity (state[1]).

    While training (gradients on) and not yet frozen, ``sigma`` follows the mean per-token std (EMA).
    Once frozen, the norm is linear: ``fold_frozen_norms`` moves gain / sigma and bias into the linears
    that read it and sets state[2]; from then on only the centering is left to fade.
    """
    freeze, mix, folded = state[0], state[1], state[2]
    mean = x.mean(-1, keepdim=True)
    std = (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    if torch.is_grad_enabled():
        with torch.no_grad():
            observed = std.detach().float().mean()
            momentum = EMA_MOMENTUM * (1 - freeze)
            sigma.copy_(torch.where(sigma > 0, sigma * (1 - momentum) + momentum * observed, observed))
    divisor = (1 - freeze) * std + freeze * sigma.to(std.dtype)
    keep = 1 - mix
    gain = keep * weight + mix if weight is not None else 1
    scale = folded + (1 - folded) * gain / divisor.pow(keep)
    y = (x - keep * mean) * scale
    return y + ((1 - folded) * keep) * bias if bias is not None else y


def gradual_mix(old, new, state):
    """(1 - a) old + a new, a = state[1]: a replaced op fading into its replacement."""
    mix = state[1]
    return (1 - mix) * old + mix * new


GRADUAL_FUNCTIONS = (gradual_layer_norm, gradual_mix)


def _site_kind(op: Op) -> str:
    if op.kind in NORMS:
        return "norm"
    return "attention" if op.kind is OpKind.SOFTMAX else "activation"


def blend_hook(op: Op, new: fx.Node) -> fx.Node:
    """Insert the blend of ``op`` into ``new`` after both; users of ``op`` then read it."""
    gm = op.output.graph.owning_module
    graph = gm.graph
    kind = _site_kind(op)
    # [freeze, mix, folded]: set by apply_schedule and fold_frozen_norms
    state = add_buffer(gm, f"gradual_{kind}_{op.layer if op.layer is not None else 'final'}", torch.zeros(3))
    node = op.output
    # After the later of the old op and its replacement (the replacement of a norm is an earlier node).
    anchor = max((node, new), key=lambda n: _position(graph, n))
    with graph.inserting_after(anchor):
        state_node = graph.get_attr(state)
    layer_norm = node if kind == "norm" and target_name(node) == "layer_norm" and len(op.nodes) == 1 else None
    if layer_norm is not None and _last_dim_only(layer_norm):
        x, _, weight, bias, eps = (list(layer_norm.args) + [None, None, None, 1e-5])[:5]
        eps = layer_norm.kwargs.get("eps", eps)
        sigma = add_buffer(gm, f"gradual_sigma_{op.layer if op.layer is not None else 'final'}", -torch.ones(()))
        with graph.inserting_after(state_node):
            sigma_node = graph.get_attr(sigma)
        with graph.inserting_after(sigma_node):
            blend = graph.call_function(gradual_layer_norm, (x, weight, bias, float(eps), sigma_node, state_node))
    else:
        with graph.inserting_after(state_node):
            blend = graph.call_function(gradual_mix, (node, new, state_node))
    copy_meta(node, state_node, blend, leave_module=_innermost_is_the_op(node))
    blend.meta[GRADUAL_KEY] = {"kind": kind, "layer": op.layer}
    return blend


def _innermost_is_the_op(node: fx.Node) -> bool:
    """A blend stands in for a whole norm/activation module: it must not be classified as part of it."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return False
    cls = str(list(stack.values())[-1][1]).rsplit(".", 1)[-1].lower()
    return any(word in cls for word in ("norm", "gelu", "relu", "silu", "activation"))


def _position(graph: fx.Graph, node: fx.Node) -> int:
    for index, candidate in enumerate(graph.nodes):
        if candidate is node:
            return index
    return -1


def _last_dim_only(node: fx.Node) -> bool:
    shape = node.args[1] if len(node.args) > 1 else None
    return isinstance(shape, (list, tuple)) and len(shape) == 1


def gradual_sites(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in GRADUAL_FUNCTIONS]


# -- building the training graph -----------------------------------------------------------------
def split_pipeline(pipeline: str) -> tuple[list, list, list]:
    """(items run at step 0 in order, which of them blend, FOLD-phase items deferred to export)."""
    items = order_by_phase(expand_pipeline(pipeline)) if pipeline.strip() not in ("", "none") else []
    now = [item for item in items if PASSES[item[0]].phase < Phase.FOLD or PASSES[item[0]].phase == Phase.INSTRUMENT]
    deferred = [item for item in items if item not in now]
    return now, [name for name, _ in now if name in BLENDING_PASSES], deferred


def build_gradual(gm: fx.GraphModule, pipeline: str) -> tuple[PipelineResult, list]:
    """Run ``pipeline`` on ``gm`` with the blending passes blending; returns the result and the deferred items."""
    now, _, deferred = split_pipeline(pipeline)
    current, first = gm, None
    for name, options in now:
        manager = PassManager([(name, options)], pipeline_text=pipeline)
        if name in BLENDING_PASSES:
            with blending(blend_hook):
                result = manager.run(current)
        else:
            result = manager.run(current)
        first = first or result
        current = result.graph_module
    if first is None:
        raise AeroError("--gradual needs passes to apply: give --passes (not 'none')")
    for node in gradual_sites(current):  # remove-layernorm{replace=...} tagged the stream; its readers read the blend
        stream = node.args[0]
        if node.target is gradual_mix and node.meta[GRADUAL_KEY]["kind"] == "norm":
            stream = node.args[1]
        if isinstance(stream, fx.Node) and REPLACEMENT_KEY in stream.meta:
            node.meta[REPLACEMENT_KEY] = stream.meta[REPLACEMENT_KEY]
    if not gradual_sites(current):
        raise AeroError(f"--gradual: no pass of '{pipeline}' blends anything into this model; blending passes are "
                        f"{', '.join(BLENDING_PASSES)}")
    result.before = first.before
    return result, deferred


# -- the schedule --------------------------------------------------------------------------------
def _ramp(done: int, start: float, end: float) -> float:
    if done <= start:
        return 0.0
    return 1.0 if done >= end else (done - start) / (end - start)


def schedule(gm: fx.GraphModule, steps: int) -> dict[fx.Node, tuple[float, float, float, float]]:
    """Each blend's (freeze start, freeze end, mix start, mix end) in completed steps."""
    sites = gradual_sites(gm)
    norm_layers = sorted({n.meta[GRADUAL_KEY]["layer"] for n in sites if n.meta[GRADUAL_KEY]["kind"] == "norm"},
                         key=lambda layer: (layer is None, layer if layer is not None else 0))
    freeze_end = FREEZE_SHARE * steps if norm_layers else 0.0
    # Window of each layer's norms after the freeze; a final norm (layer None: it feeds the LM head, whose
    # logit scale the whole stream must learn to carry) gets FINAL_NORM_SHARE of it, the blocks the rest.
    removal = steps - freeze_end
    final = None in norm_layers and len(norm_layers) > 1
    inner = [layer for layer in norm_layers if layer is not None] if final else norm_layers
    inner_span = removal * (1 - FINAL_NORM_SHARE) if final else removal
    windows = {layer: (freeze_end + i * inner_span / len(inner), freeze_end + (i + 1) * inner_span / len(inner))
               for i, layer in enumerate(inner)}
    if final:
        windows[None] = (freeze_end + inner_span, float(steps))
    plan = {}
    for node in sites:
        info = node.meta[GRADUAL_KEY]
        if info["kind"] == "norm":
            plan[node] = (0.0, freeze_end, *windows[info["layer"]])
        else:
            plan[node] = (0.0, 0.0, 0.0, float(steps))
    return plan


@torch.no_grad()
def apply_schedule(gm: fx.GraphModule, done: int, steps: int) -> float:
    """Set every blend's state for the forward after ``done`` completed steps; returns the mean mix."""
    plan = schedule(gm, steps)
    mixes = []
    for node, (f0, f1, m0, m1) in plan.items():
        state = attr_value(gm, node.args[-1])
        freeze = _ramp(done, f0, f1) if f1 > f0 else 1.0
        mix = _ramp(done, m0, m1)
        state[:2] = torch.tensor([freeze, mix], dtype=state.dtype)
        mixes.append(mix)
    fold_frozen_norms(gm)  # exact: from the freeze's end a block norm is centering alone
    return sum(mixes) / len(mixes) if mixes else 1.0


def _foldable_linears(gm: fx.GraphModule, norm: fx.Node) -> list[tuple[fx.Node, int, fx.Node | None]] | None:
    """(weight get_attr, its input dim, bias get_attr or None) of every linear reading ``norm`` (through views);
    None unless every reader is such a linear with a weight of its own (a tied head must stay tied)."""
    from .reparametrize import linear_weight

    found, frontier = [], list(norm.users)
    while frontier:
        user = frontier.pop()
        if user.op == "call_function" and classify_node(gm, user) in (OpKind.RESHAPE, OpKind.NOOP):
            frontier.extend(user.users)
            continue
        weight = linear_weight(user)
        if weight is None or (target_name(user) == "linear" and user.args[0] is not norm):
            return None
        weight_node, in_dim = weight
        tensor = attr_value(gm, weight_node)
        if len(weight_node.users) > 1 or any(n is not weight_node and n.op == "get_attr" and attr_value(gm, n) is tensor
                                             for n in gm.graph.nodes):
            return None  # read elsewhere too (tied, under any name): scaling it would change that reader
        bias = user.args[2] if target_name(user) == "linear" and len(user.args) > 2 else (
            user.args[0] if target_name(user) == "addmm" else None)
        if bias is not None and not (isinstance(bias, fx.Node) and bias.op == "get_attr"):
            return None
        found.append((weight_node, in_dim, bias))
    return found or None


@torch.no_grad()
def fold_frozen_norms(gm: fx.GraphModule) -> int:
    """Fold each frozen, not yet folded LayerNorm's gain / sigma and bias into the linears reading it (exact).

    ``W (g (x - m) / s + b) + c = (W diag(g / s)) (x - m) + (c + W b)``: the same function, and the norm
    keeps only its centering (gain 1, divisor 1, bias 0: what remove-layernorm leaves, but the centering).
    A norm read by anything else (GPT-2's final norm feeds the head tied to the embedding) is not folded.
    """
    folded = 0
    for node in gradual_sites(gm):
        if node.target is not gradual_layer_norm:
            continue
        state = attr_value(gm, node.args[5])
        if state[2] > 0 or state[0] < 1 or state[1] > 0:
            continue
        readers = _foldable_linears(gm, node)
        if readers is None:
            continue
        _, weight_node, bias_node, _, sigma_node, _ = node.args
        gain = attr_value(gm, weight_node) if isinstance(weight_node, fx.Node) else None
        shift = attr_value(gm, bias_node) if isinstance(bias_node, fx.Node) else None
        sigma = attr_value(gm, sigma_node)
        if shift is not None and any(bias_attr is None for _, _, bias_attr in readers):
            continue  # a bias to carry and nowhere to put it: this norm stays blended
        scale = (gain if gain is not None else torch.ones(())) / sigma
        for weight_attr, in_dim, bias_attr in readers:
            weight = attr_value(gm, weight_attr)
            if shift is not None:
                attr_value(gm, bias_attr).add_(weight @ shift if in_dim == 1 else shift @ weight)
            weight.mul_(scale.reshape(1, -1) if in_dim == 1 else scale.reshape(-1, 1))
        state[2] = 1.0
        folded += 1
    return folded


# -- export ----------------------------------------------------------------------------------------
def finalize(gm: fx.GraphModule, deferred: list) -> fx.GraphModule:
    """Every blend replaced by its new form, then the deferred FOLD passes: the pipeline's graph (in place on gm)."""
    for node in gradual_sites(gm):
        new = node.args[0] if node.target is gradual_layer_norm else node.args[1]  # a norm's new form: its input
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    remove_dead_code(gm)  # the old ops, and the blends' state buffers, go with them
    gm.recompile()
    if deferred:
        gm = PassManager(list(deferred)).run(gm).graph_module
    return gm


def describe(pipeline: str) -> dict:
    """Which passes of ``pipeline`` blend, which apply at step 0, which run at export (for metrics and messages)."""
    now, blended, deferred = split_pipeline(pipeline)
    return {"blended": blended, "applied_at_step_0": [n for n, _ in now if n not in blended and n != "entropy-hooks"],
            "at_export": [n for n, _ in deferred]}
