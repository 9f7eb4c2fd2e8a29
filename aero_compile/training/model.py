"""The model being trained: the rewritten graph with entropy outputs, wrapped with its loss.

``build_graph(config)`` loads and captures the model, optionally re-initializes it, runs the rewrite
pipeline and appends ``entropy-hooks``; ``TrainableLM`` turns ``gm(x) -> (logits, entropies)`` into the
training loss (cross-entropy plus lambda times the entropy penalty).
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..capturing import capture
from ..graph_info import graph_info
from ..loader import load_model
from ..pass_manager import PassManager, PipelineResult
from .config import TrainConfig
from .regularizer import EntropyRegularizer
from .reparametrize import reparametrize

INIT_STD = 0.02  # GPT-2's initializer range


def reinitialize(gm: fx.GraphModule, seed: int) -> None:
    """GPT-2 style random weights for a captured graph: matrices N(0, 0.02), biases 0, norm gains 1.

    Works on the parameters' names and shapes, so it serves every source (built-in, HF, .pt2) alike.
    Buffers (causal masks, rotary tables) are left as they are.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in gm.named_parameters():  # tied weights appear once
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * INIT_STD)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)


def training_pipeline(passes: str, temperature: str) -> str:
    """The user's rewrite pipeline followed by entropy-hooks (with the temperature option)."""
    hooks = "entropy-hooks" if temperature == "none" else f"entropy-hooks{{temperature={temperature}}}"
    passes = passes.strip()
    return hooks if passes in ("", "none") else f"{passes},{hooks}"


def build_graph(config: TrainConfig) -> PipelineResult:
    """Load, capture, (re-initialize,) rewrite: ``result.graph_module(x)`` returns (logits, entropies)."""
    source = load_model(config.model)
    gm = capture(source, name=config.model)
    if config.init == "random":
        reinitialize(gm, config.seed)
    graph_info(gm).check_seq_len(config.seq_len, "--seq-len")
    result = PassManager.from_pipeline(training_pipeline(config.passes, config.temperature)).run(gm)
    # remove-layernorm{replace=...}: the linears reading a removed norm train reparametrized (folded on export)
    result.reparametrized = reparametrize(result.graph_module)
    freeze_unused_parameters(result.graph_module)
    return result


def freeze_unused_parameters(gm: fx.GraphModule) -> list[str]:
    """Parameters no node reads any more (folded or pruned away) stop requiring grad: DDP and AdamW skip them."""
    used = {str(node.target) for node in gm.graph.nodes if node.op == "get_attr"}
    frozen = []
    for name, param in gm.named_parameters(remove_duplicate=False):
        if name not in used and param.requires_grad:
            # A tied weight is used under one of its names; keep it trainable if any name is read.
            if not any(other in used for other, p in gm.named_parameters(remove_duplicate=False) if p is param):
                param.requires_grad_(False)
                frozen.append(name)
    return frozen


def heads_per_softmax(gm: fx.GraphModule) -> list[int]:
    return [output.heads for output in graph_info(gm).entropy_outputs]


def layers_of_softmaxes(gm: fx.GraphModule) -> list[int]:
    return [output.layer for output in graph_info(gm).entropy_outputs]


class TrainableLM(nn.Module):
    """input_ids, targets -> (loss, cross-entropy, penalty, entropies); one module for DDP and compile.

    ``regularizer`` always exists so that every run reports the same penalty; with the regularizer off
    its lambda is 0 and theta is frozen at its start value.
    """

    def __init__(self, graph: fx.GraphModule, regularizer: EntropyRegularizer):
        super().__init__()
        self.graph = graph
        self.regularizer = regularizer

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor):
        output = self.graph(input_ids)
        # A graph with no attention softmax left has no entropy outputs: its logits alone.
        logits, entropies = output if isinstance(output, (tuple, list)) else (output, ())
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        weighted, raw = self.regularizer(entropies, input_ids.shape[1])
        return ce + weighted, ce.detach(), raw.detach(), [e.detach().float() for e in entropies]


def make_trainable(graph: fx.GraphModule, config: TrainConfig) -> TrainableLM:
    regularizer = EntropyRegularizer(heads_per_softmax(graph), lam=config.entropy_lambda if config.entropy_reg else 0.0,
                                     gamma=config.entropy_gamma, theta_init=config.theta_init,
                                     learnable=config.entropy_reg)
    return TrainableLM(graph, regularizer)


def parameter_groups(model: TrainableLM, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices only (not biases, scales, temperatures or thresholds)."""
    decay, no_decay = [], []
    regularizer_params = {id(p) for p in model.regularizer.parameters()}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 and id(param) not in regularizer_params else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
