"""AERO's head-wise entropy regularizer: keep every head's attention entropy near a learnable target.

For head h of softmax l (a layer), with E(l, h) its mean attention entropy over the batch and query
rows and E_max = log T:

    delta(l, h)   = E(l, h) - theta(l, h) * E_max          theta learnable per head
    penalty(l, h) = delta^2 if |delta| > gamma * E_max else 0   (a tolerance band, no pull inside it)
    L             = L_CE + lambda * mean_l mean_h penalty(l, h)

It counters the two failure modes of Softmax-only models: entropy collapse (deep heads attend to one
token) and entropic overload (early heads attend uniformly). Defaults (lambda 1e-5, gamma 0.2) are the
paper's.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from .config import DEFAULT_GAMMA, DEFAULT_LAMBDA, DEFAULT_THETA_INIT


def max_entropy(seq_len: int) -> float:
    """E_max = log T: the entropy of uniform attention over T keys."""
    return math.log(seq_len)


def entropy_penalty(entropies: Sequence[torch.Tensor], thetas: Sequence[torch.Tensor], seq_len: int,
                    gamma: float = DEFAULT_GAMMA) -> torch.Tensor:
    """mean over layers of (mean over heads of delta^2 beyond the gamma*E_max band); unweighted by lambda.

    ``entropies[l]`` and ``thetas[l]`` are [heads] tensors for softmax l.
    """
    if len(entropies) != len(thetas):
        raise ValueError(f"{len(entropies)} entropy tensors but {len(thetas)} thresholds")
    e_max = max_entropy(seq_len)
    per_layer = []
    for entropy, theta in zip(entropies, thetas):
        delta = entropy.float() - theta.float() * e_max
        outside = delta.abs() > gamma * e_max
        per_layer.append(torch.where(outside, delta.square(), torch.zeros_like(delta)).mean())
    if not per_layer:  # no attention softmax left (attention passes): nothing to regularize
        return torch.zeros(())
    return torch.stack(per_layer).mean()


class EntropyRegularizer(nn.Module):
    """Holds the learnable thresholds theta (one [heads] parameter per softmax) and lambda, gamma.

    ``heads_per_softmax`` is ``[output.heads for output in graph_info(gm).entropy_outputs]``. With
    ``learnable=False`` theta stays at its start value (used to report the penalty of unregularized runs).
    """

    def __init__(self, heads_per_softmax: Sequence[int], *, lam: float = DEFAULT_LAMBDA, gamma: float = DEFAULT_GAMMA,
                 theta_init: float = DEFAULT_THETA_INIT, learnable: bool = True):
        super().__init__()
        self.lam = float(lam)
        self.gamma = float(gamma)
        self.thetas = nn.ParameterList(
            nn.Parameter(torch.full((int(h),), float(theta_init)), requires_grad=learnable) for h in heads_per_softmax
        )

    def penalty(self, entropies: Sequence[torch.Tensor], seq_len: int) -> torch.Tensor:
        """The unweighted penalty; the loss adds ``self.lam`` times it."""
        return entropy_penalty(entropies, list(self.thetas), seq_len, self.gamma)

    def forward(self, entropies: Sequence[torch.Tensor], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambda * penalty, penalty)."""
        raw = self.penalty(entropies, seq_len)
        return self.lam * raw, raw
