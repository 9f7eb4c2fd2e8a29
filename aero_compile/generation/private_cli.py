"""``--run-private --generate N``: greedy generation under the chosen engine, before and after the passes.

Fills ``measured.before.generation`` / ``measured.after.generation``: ``tokens`` (generated ids,
prompt excluded), ``plaintext_tokens`` (greedy decoding of the same programs in plaintext), ``decode``
(per step: ``context``, ``rounds``, ``bytes``, ``seconds``; the first entry is the prefill),
``near_ties`` (steps whose plaintext top-2 margin is below twice the measured logits error there; greedy
runs only: a sampled run's tokens differ from plaintext greedy by design, its ``near_ties`` is None),
``sampling`` (``--temperature`` / ``--top-k`` / ``--sample-seed``, drawn by the client in plaintext),
``engine`` and ``provider``, and ``predicted_bytes`` (the analyzer's total over the generation, where
it priced under one of the engine's profiles). The engine runs through its registry entry
(``targets.private.engines``: ``generation``).
"""

from __future__ import annotations

import argparse

import torch

from .decoding import greedy_generate
from .sampling import Sampling
from .table import print_private_steps


def run_private_generation(args: argparse.Namespace, sides: dict, programs: dict, prompt_tokens: int, result) -> None:
    from ..targets.private.engines import DEFAULT_ENGINE, engine

    chosen = engine(getattr(args, "engine", None) or DEFAULT_ENGINE)
    generate = chosen.generate()
    ids = args.prompt_token_ids
    if ids:
        prompt = torch.tensor([ids])
    else:
        from ..graph_info import graph_info

        vocab = graph_info(sides["before"]).vocab_size or 2
        prompt = torch.randint(0, vocab, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    measured = result.report.measured = dict(result.report.measured or {})
    profile = _priced_profile(args, chosen)
    sampling = getattr(args, "sampling", None) or Sampling()
    print(f"\nprivate generation under {chosen.title}: prompt {prompt.shape[1]} tokens, {args.generate} new tokens, "
          f"{sampling.describe()}")
    for side, gm in sides.items():
        run = generate(gm, prompt, args.generate, args, programs[side])
        plaintext, step_logits = greedy_generate(programs[side], prompt, args.generate)
        near_ties = [] if sampling.greedy else None  # sampled tokens leave the greedy path: no tie to speak of
        for step, (private_logits, plain) in enumerate(zip(run["logits"], step_logits)):
            error = float((private_logits - plain[0]).abs().max())
            top2 = plain[0].topk(2).values
            if near_ties is not None and float(top2[0] - top2[1]) < 2 * error:
                near_ties.append(step)
        decode = [{"context": s["context"], "rounds": s["rounds"], "bytes": s["bytes"], "seconds": s["seconds"]}
                  for s in run["decode"]]
        section = {"tokens": run["tokens"], "plaintext_tokens": plaintext, "decode": decode, "near_ties": near_ties,
                   "engine": chosen.name, "provider": run["provider"], "sampling": sampling.record()}
        measured.setdefault(side, {})["generation"] = section
        print(f"  {side} ({run['provider']}): private tokens {run['tokens']}, plaintext {plaintext}"
              + (f", near ties at steps {near_ties}" if near_ties else ""))
        print_private_steps(decode)
        priced = getattr(getattr(result.report, side), "generation", None)
        if profile and priced is not None:
            total = sum(entry["bytes"] for entry in decode)
            section["predicted_bytes"] = {"profile": profile, "bytes": int(priced.total.bytes)}
            print(f"    total {total / 1e6:.3f} MB measured, {priced.total.bytes / 1e6:.3f} MB predicted ({profile}): "
                  f"{(total - priced.total.bytes) / max(priced.total.bytes, 1):+.1%}")
    if run["note"]:
        print(f"  {run['note']}")


def _priced_profile(args: argparse.Namespace, chosen) -> str | None:
    """The profile the generation was priced under, if it is one of the engine's (else no comparison)."""
    from ..cost.cli_extension import _analysis_options

    profile = _analysis_options(args).get("profile")
    return profile if profile in chosen.profiles else None
