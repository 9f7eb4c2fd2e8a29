"""Validation: perplexity over fixed windows of the validation split, and the heads' mean entropies."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from .model import TrainableLM
from .regularizer import max_entropy


@dataclass
class Evaluation:
    loss: float  # mean cross-entropy per token (nats)
    ppl: float
    entropies: list[list[float]]  # [softmax (layer)][head], mean over the validation windows
    penalty: float  # the unweighted entropy penalty at these entropies
    tokens: int

    def to_dict(self) -> dict:
        return {"loss": self.loss, "ppl": self.ppl, "entropy_penalty": self.penalty, "tokens": self.tokens}


def autocast_context(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: TrainableLM, batches: list, device: torch.device, amp: bool = False) -> Evaluation:
    """Token-weighted mean loss over ``batches`` (from ``val_batches``); ppl = exp(loss)."""
    total_loss, total_tokens = 0.0, 0
    entropy_sums = None
    for inputs, targets in batches:
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast_context(device, amp):
            _, ce, _, entropies = model(inputs, targets)
        tokens = targets.numel()
        total_loss += ce.item() * tokens
        total_tokens += tokens
        batch_entropy = [e.cpu() * tokens for e in entropies]
        entropy_sums = batch_entropy if entropy_sums is None else [a + b for a, b in zip(entropy_sums, batch_entropy)]
    mean_entropies = [e / total_tokens for e in entropy_sums]
    seq_len = batches[0][0].shape[1]
    penalty = model.regularizer.penalty([e.to(device) for e in mean_entropies], seq_len).item()
    loss = total_loss / total_tokens
    return Evaluation(loss=loss, ppl=math.exp(min(loss, 50.0)), entropies=[e.tolist() for e in mean_entropies],
                      penalty=penalty, tokens=total_tokens)


def entropy_stats(entropies: list[torch.Tensor], seq_len: int) -> dict[str, float]:
    """Mean, min and max head entropy as a fraction of E_max: for the progress line (NaN: no softmax)."""
    if not entropies:
        return {"mean": float("nan"), "min": float("nan"), "max": float("nan")}
    flat = torch.cat([e.flatten().float().cpu() for e in entropies]) / max_entropy(seq_len)
    return {"mean": flat.mean().item(), "min": flat.min().item(), "max": flat.max().item()}


@torch.no_grad()
def evaluate_exported(path, batches: list) -> float:
    """Validation ppl of a written model.pt2, loaded afresh (``torch.export.load``): what a user gets back.

    Same windows and token weighting as ``evaluate``; on CPU, float32.
    """
    import torch.nn.functional as F

    module = torch.export.load(str(path)).module()
    total_loss, total_tokens = 0.0, 0
    for inputs, targets in batches:
        logits = module(inputs.cpu())
        while isinstance(logits, (tuple, list)):
            logits = logits[0]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.cpu().reshape(-1))
        total_loss += loss.item() * targets.numel()
        total_tokens += targets.numel()
    return math.exp(min(total_loss / total_tokens, 50.0))
