"""How the client picks the next token from the logits it opened: greedy, or sampled in plaintext.

    sampling = Sampling(temperature=0.8, top_k=40, seed=1)   # Sampling() is greedy
    pick = sampling.picker()        # a fresh generator: the same seed gives the same tokens
    token = pick(last_logits)       # last_logits: [V] float tensor

Sampling happens on the client, after it alone opened the logits: the owner never sees the logits, the
settings or the draws. The seed makes a run reproducible (``--sample-seed``); each private session (the
graph before the passes, the graph after) starts from it again, so the two sides draw alike.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from ..errors import AeroError

DEFAULT_SEED = 0


@dataclass(frozen=True)
class Sampling:
    """Greedy when neither ``temperature`` nor ``top_k`` is set; else softmax(logits / T) over the top K."""

    temperature: float | None = None
    top_k: int | None = None
    seed: int = DEFAULT_SEED

    @property
    def greedy(self) -> bool:
        return self.temperature is None and self.top_k is None

    def record(self) -> dict:
        """The ``sampling`` entry of ``measured.*.generation``."""
        if self.greedy:
            return {"method": "greedy"}
        return {"method": "sample", "temperature": self.temperature if self.temperature is not None else 1.0,
                "top_k": self.top_k, "seed": self.seed}

    def describe(self) -> str:
        if self.greedy:
            return "greedy"
        record = self.record()
        top_k = f", top-k {record['top_k']}" if record["top_k"] else ""
        return f"sampled (temperature {record['temperature']:g}{top_k}, seed {record['seed']})"

    def picker(self):
        """A function logits [V] -> token id, with its own generator seeded from ``seed``."""
        if self.greedy:
            return lambda logits: int(logits.argmax())
        generator = torch.Generator().manual_seed(self.seed)
        temperature = self.temperature if self.temperature is not None else 1.0

        def pick(logits: torch.Tensor) -> int:
            scaled = logits.double() / temperature
            if self.top_k is not None and self.top_k < scaled.numel():
                kth = scaled.topk(self.top_k).values[-1]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            probabilities = torch.softmax(scaled, dim=-1)
            return int(torch.multinomial(probabilities, 1, generator=generator))

        return pick


def add_arguments(group) -> None:
    """``--temperature``, ``--top-k``, ``--sample-seed`` (into the generation option group)."""
    group.add_argument("--temperature", type=float, metavar="T",
                       help="with --run-private --generate: the client samples from softmax(logits / T) in "
                            "plaintext instead of taking the argmax (default: greedy)")
    group.add_argument("--top-k", type=int, metavar="K",
                       help="with --run-private --generate: the client samples among the K most likely tokens "
                            "(temperature 1 unless --temperature is given)")
    group.add_argument("--sample-seed", type=int, metavar="S",
                       help=f"seed of the client's sampling (default {DEFAULT_SEED}): the same seed gives the same tokens")


def sampling_from_args(args: argparse.Namespace) -> Sampling:
    """The checked settings; AeroError (one line) on a bad value or one given without private generation."""
    temperature, top_k = getattr(args, "temperature", None), getattr(args, "top_k", None)
    seed = getattr(args, "sample_seed", None)
    if temperature is not None and not (temperature > 0 and temperature < float("inf")):
        raise AeroError(f"--temperature must be a positive number, got {temperature:g}: give e.g. --temperature 0.8 "
                        "(or leave it out for greedy decoding)")
    if top_k is not None and top_k < 1:
        raise AeroError(f"--top-k must be at least 1, got {top_k}: give e.g. --top-k 40 (or leave it out)")
    sampling = Sampling(temperature, top_k, DEFAULT_SEED if seed is None else seed)
    given = [flag for flag, value in (("--temperature", temperature), ("--top-k", top_k), ("--sample-seed", seed))
             if value is not None]
    if given:
        private = getattr(args, "run_private", False) or getattr(args, "party", False)
        if getattr(args, "generate", None) is None or not private:
            raise AeroError(f"{given[0]} sets how the client picks tokens in private generation: add --run-private "
                            "--generate N (the analyzer's table and plaintext_tokens are greedy)")
        if seed is not None and sampling.greedy:
            raise AeroError("--sample-seed seeds sampling: add --temperature T or --top-k K (greedy draws nothing)")
    return sampling
