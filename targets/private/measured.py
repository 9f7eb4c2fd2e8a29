"""What every engine reports about a private run's logits, against the plaintext run of the same graph."""

from __future__ import annotations

import torch


def logits_error(private: torch.Tensor, plain: torch.Tensor) -> dict:
    """Max abs error and the fraction of positions whose argmax (next token) agrees.

    ``argmax_agreement_resolvable`` leaves out near-ties: positions whose plaintext top-2 margin is
    below twice the max abs error, where no computation at that precision can be expected to agree
    (random-init tiny models have margins of 1e-4); ``resolvable_positions`` says how many it judges.
    """
    private, plain = torch.as_tensor(private).float(), plain.float()
    agree = private.argmax(-1) == plain.argmax(-1)
    error = (private - plain).abs().max().item()
    top2 = plain.topk(2, dim=-1).values
    resolvable = (top2[..., 0] - top2[..., 1]) > 2 * error
    resolvable_agreement = agree[resolvable].float().mean().item() if resolvable.any() else 1.0
    return {"max_abs_error": error, "argmax_agreement": agree.float().mean().item(),
            "argmax_agreement_resolvable": resolvable_agreement,
            "resolvable_positions": int(resolvable.sum().item()),
            "near_tie_positions": int((~resolvable).sum().item())}


def before_after(before, after, fmt="{:,}") -> str:
    """A measured table's cell: "1,024 -> 512" (both engines' tables print pairs this way)."""
    return f"{fmt.format(before)} -> {fmt.format(after)}"
