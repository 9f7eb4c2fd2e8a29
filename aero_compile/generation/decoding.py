"""Greedy decoding with the derived programs, and its check against re-running the full sequence.

    tokens, steps = greedy_generate(programs, prompt_ids, new_tokens=8)
    check = check_against_rerun(gm, programs, prompt_ids, new_tokens=8)   # raises AeroError on a mismatch
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from ..errors import AeroError
from .programs import GenerationPrograms

# fp32 sums taken in another order: logits agree to this, relative to the largest logit
RELATIVE_TOLERANCE = 1e-4
ABSOLUTE_TOLERANCE = 1e-6


def _logits_and_cache(out) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return out[0], list(out[1:])


def greedy_generate(programs: GenerationPrograms, prompt_ids: torch.Tensor,
                    new_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
    """The ``new_tokens`` greedy ids after ``prompt_ids`` [1, T], and the last-position logits each came from."""
    return generate(programs, prompt_ids, new_tokens, lambda last: int(last.argmax()))


def generate(programs: GenerationPrograms, prompt_ids: torch.Tensor, new_tokens: int,
             pick) -> tuple[list[int], list[torch.Tensor]]:
    """As ``greedy_generate``, each token chosen by ``pick(last_logits [V])`` (``sampling.Sampling.picker``)."""
    with torch.no_grad():
        logits, cache = _logits_and_cache(programs.prefill(prompt_ids))
        tokens, step_logits = [], []
        for step in range(new_tokens):
            last = logits[:, -1]
            step_logits.append(last)
            token = pick(last[0])
            tokens.append(token)
            if step + 1 < new_tokens:
                logits, cache = _logits_and_cache(programs.decode(torch.tensor([[token]]), *cache))
    return tokens, step_logits


@dataclass
class RerunCheck:
    tokens: list[int]
    max_abs_diff: float  # the largest |decode logits - rerun logits| over every step
    scale: float  # the largest |logit| seen


def check_against_rerun(gm: fx.GraphModule, programs: GenerationPrograms, prompt_ids: torch.Tensor,
                        new_tokens: int) -> RerunCheck:
    """Greedy generation with prefill + decode steps must give the logits re-running the sequence gives."""
    tokens, step_logits = greedy_generate(programs, prompt_ids, new_tokens)
    sequence = prompt_ids
    worst, scale = 0.0, 0.0
    with torch.no_grad():
        for step, (token, logits) in enumerate(zip(tokens, step_logits)):
            out = gm(sequence)
            while isinstance(out, (tuple, list)):
                out = out[0]
            reference = out[:, -1]
            diff = (logits - reference).abs().max().item()
            scale = max(scale, reference.abs().max().item())
            worst = max(worst, diff)
            if not diff <= ABSOLUTE_TOLERANCE + RELATIVE_TOLERANCE * scale:
                raise AeroError(f"decode step {step} disagrees with re-running the sequence: max |logits diff| "
                                f"{diff:.3g} at context {sequence.shape[1]}")
            sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
    return RerunCheck(tokens, worst, scale)
