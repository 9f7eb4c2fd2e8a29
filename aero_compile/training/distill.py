"""Distillation from the model before the passes: ``--distill`` makes the original model the teacher.

The teacher is the captured model before the rewrite (the same weights the student starts from), frozen,
in eval mode, run without gradient. The student is the rewritten training graph. Loss terms, each with
its weight (``DistillWeights``):

- ``kl``: temperature-scaled KL(teacher || student) on the next-token distributions, T^2 * KL / tokens
  (Hinton et al.), so its gradient scale does not change with T;
- ``hidden``: at the residual stream after each block, ||s - t||^2 / ||t||^2 averaged over blocks
  (relative, so a block whose stream is 10x larger does not weigh 100x more);
- ``attention``: the same relative squared error on the attention probabilities of every softmax head
  the passes left (MPCFormer's attention term), matched by layer;
- the language-model cross-entropy (``lm``) and the entropy regularizer add on top.

Layers are matched from the graph, not from module names: ``block_outputs`` asks the classifier for the
layer of each op and takes each layer's last residual add. Teacher activations are graph outputs of a
tapped copy, so only the matched points outlive its forward (fx code frees every other value after its
last use).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..blocks import attention_softmaxes
from ..capturing import clone_graph_module
from ..errors import AeroError
from ..ops import classify_graph, is_tensor_add
from .model import TrainableLM

TERMS = ("kl", "hidden", "attention")


@dataclass(frozen=True)
class DistillWeights:
    kl: float = 1.0
    temperature: float = 1.0  # of the logits in the KL term
    hidden: float = 0.0
    attention: float = 0.0
    lm: float = 1.0  # the cross-entropy on the data, beside the teacher's terms


def block_outputs(gm: fx.GraphModule) -> dict[int, fx.Node]:
    """layer -> the residual stream after that block: the last tensor add the classifier places in the layer.

    Every family ends a block by adding its last sub-block to the stream (GPT-2, Llama: ``x + mlp(..)``;
    NeoX's parallel residual: ``mlp + attn + x``); adds earlier in the block (the attention residual,
    masks, rotary embeddings) come before it in execution order.
    """
    last: dict[int, fx.Node] = {}
    for op in classify_graph(gm):
        if op.layer is not None and not op.is_region and is_tensor_add(op.output):
            last[op.layer] = op.output
    return dict(sorted(last.items()))


def softmaxes_by_layer(gm: fx.GraphModule) -> dict[int, fx.Node]:
    """layer -> its attention softmax (layers with several softmaxes, or none, are left out)."""
    found: dict[int, list[fx.Node]] = {}
    for op in attention_softmaxes(gm):
        if op.layer is not None:
            found.setdefault(op.layer, []).append(op.output)
    return {layer: nodes[0] for layer, nodes in sorted(found.items()) if len(nodes) == 1}


@dataclass(frozen=True)
class MatchPlan:
    """Which layers' hidden states and attention maps the teacher and student are compared at."""

    hidden_layers: tuple[int, ...]
    attention_layers: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"hidden_layers": list(self.hidden_layers), "attention_layers": list(self.attention_layers)}


def match_layers(teacher: fx.GraphModule, student: fx.GraphModule, weights: DistillWeights) -> MatchPlan:
    """The layers both graphs have a block output (and surviving softmax) for, when the term is on."""
    hidden = _common_layers(block_outputs, teacher, student, "--distill-hidden",
                            "no block output found in both the teacher and the student graph") if weights.hidden > 0 else ()
    attention = _common_layers(softmaxes_by_layer, teacher, student, "--distill-attention",
                               "no attention softmax survives the passes in any layer") if weights.attention > 0 else ()
    return MatchPlan(hidden, attention)


def _common_layers(points, teacher: fx.GraphModule, student: fx.GraphModule, flag: str, why: str) -> tuple[int, ...]:
    student_points = points(student)
    layers = tuple(layer for layer in points(teacher) if layer in student_points)
    if not layers:
        raise AeroError(f"{flag}: {why}; use {flag} 0")
    return layers


def _output_node(graph: fx.Graph) -> fx.Node:
    return next(node for node in reversed(graph.nodes) if node.op == "output")


def tapped(gm: fx.GraphModule, taps: list[str]) -> tuple[fx.GraphModule, int]:
    """A copy of ``gm`` (same tensors) returning one flat tuple: its own outputs, flattened, then ``taps``.

    Returns the copy and how many of its outputs are the graph's own.
    """
    clone = clone_graph_module(gm)
    by_name = {node.name: node for node in clone.graph.nodes}
    output = _output_node(clone.graph)
    value = output.args[0]
    own = list(value) if isinstance(value, (tuple, list)) else [value]
    # Entropy outputs are nested one level in non-export graphs: flatten them like the pytree codegen.
    flat = [leaf for item in own for leaf in (item if isinstance(item, (tuple, list)) else [item])]
    nodes = tuple(flat + [by_name[name] for name in taps])
    output.args = (nodes,)
    codegen = clone.graph._codegen
    pytree_info = getattr(codegen, "pytree_info", None)
    if pytree_info is not None and pytree_info.out_spec is not None:
        from torch.utils import _pytree as pytree

        codegen.pytree_info = pytree_info._replace(
            out_spec=pytree.tree_structure(nodes, is_leaf=lambda x: isinstance(x, fx.Node)))
    clone.recompile()
    return clone, len(flat)


def relative_squared_error(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """||s - t||^2 / ||t||^2 over the whole batch."""
    student, teacher = student.float(), teacher.float()
    return (student - teacher).pow(2).sum() / teacher.pow(2).sum().clamp_min(1e-12)


def logit_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), summed over the vocabulary, averaged over tokens."""
    vocab = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


class DistillingLM(nn.Module):
    """input_ids, targets -> (loss, ce, penalty, entropies, terms): the student trained against the teacher.

    Only the student (a ``TrainableLM``) is a submodule: the optimizer, DDP and checkpoints see its
    parameters alone. The teacher and the student's tapped view are held outside the module tree; the
    view shares the student's tensors, so training it trains the student.
    """

    def __init__(self, student: TrainableLM, teacher: fx.GraphModule, weights: DistillWeights):
        super().__init__()
        self.student = student
        self.weights = weights
        self.plan = match_layers(teacher, student.graph, weights)
        teacher_blocks, student_blocks = block_outputs(teacher), block_outputs(student.graph)
        teacher_maps, student_maps = softmaxes_by_layer(teacher), softmaxes_by_layer(student.graph)
        teacher_taps = [teacher_blocks[l].name for l in self.plan.hidden_layers] + \
                       [teacher_maps[l].name for l in self.plan.attention_layers]
        student_taps = [student_blocks[l].name for l in self.plan.hidden_layers] + \
                       [student_maps[l].name for l in self.plan.attention_layers]
        teacher_view, self._teacher_own = tapped(teacher, teacher_taps)
        teacher_view.eval()
        for param in teacher_view.parameters():
            param.requires_grad_(False)
        student_view, self._student_own = tapped(student.graph, student_taps)
        self._views = (teacher_view, student_view)  # a tuple: not registered as submodules

    @property
    def teacher(self) -> fx.GraphModule:
        return self._views[0]

    def _split(self, outputs, own: int):
        hidden = len(self.plan.hidden_layers)
        taps = outputs[own:]
        return outputs[0], list(outputs[1:own]), list(taps[:hidden]), list(taps[hidden:])

    def terms(self, input_ids: torch.Tensor):
        """(student logits, student entropies, {term: unweighted value}) for one batch."""
        teacher_view, student_view = self._views
        with torch.no_grad():
            t_logits, _, t_hidden, t_maps = self._split(teacher_view(input_ids), self._teacher_own)
        s_logits, entropies, s_hidden, s_maps = self._split(student_view(input_ids), self._student_own)
        zero = s_logits.new_zeros((), dtype=torch.float32)
        terms = {"kl": logit_kl(s_logits, t_logits, self.weights.temperature) if self.weights.kl > 0 else zero}
        terms["hidden"] = torch.stack([relative_squared_error(s, t) for s, t in zip(s_hidden, t_hidden)]).mean() \
            if s_hidden else zero
        terms["attention"] = torch.stack([relative_squared_error(s, t) for s, t in zip(s_maps, t_maps)]).mean() \
            if s_maps else zero
        return s_logits, entropies, terms

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor):
        logits, entropies, terms = self.terms(input_ids)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        weighted, raw = self.student.regularizer(entropies, input_ids.shape[1])
        w = self.weights
        loss = w.lm * ce + w.kl * terms["kl"] + w.hidden * terms["hidden"] + w.attention * terms["attention"] + weighted
        return (loss, ce.detach(), raw.detach(), [e.detach().float() for e in entropies],
                {"ce": ce.detach(), **{name: value.detach() for name, value in terms.items()}})

    def _apply(self, fn, *args, **kwargs):
        # .to(device) moves the views' buffers too (their parameters are the student's or the teacher's own).
        super()._apply(fn, *args, **kwargs)
        for view in self._views:
            view._apply(fn, *args, **kwargs)
        return self


@torch.no_grad()
def evaluate_terms(model: DistillingLM, batches: list, device: torch.device, amp_context) -> dict[str, float]:
    """The unweighted distillation terms, token-weighted over the validation batches."""
    sums = dict.fromkeys(TERMS, 0.0)
    total = 0
    for inputs, _ in batches:
        inputs = inputs.to(device)
        with amp_context():
            _, _, terms = model.terms(inputs)
        tokens = inputs.numel()
        total += tokens
        for name in TERMS:
            sums[name] += terms[name].item() * tokens
    return {name: value / total for name, value in sums.items()}
