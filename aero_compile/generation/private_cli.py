"""``--run-private --generate N``: greedy generation under CrypTen, before and after the passes.

Fills ``measured.before.generation`` / ``measured.after.generation``: ``tokens`` (generated ids,
prompt excluded), ``plaintext_tokens`` (greedy decoding of the same programs in plaintext), ``decode``
(per step: ``context``, ``rounds``, ``bytes``, ``seconds``; the first entry is the prefill) and
``near_ties`` (steps whose plaintext top-2 margin is below twice the measured logits error there; greedy
runs only: a sampled run's tokens differ from plaintext greedy by design, its ``near_ties`` is None) and
``sampling`` (``--temperature`` / ``--top-k`` / ``--sample-seed``, drawn by the client in plaintext).
"""

from __future__ import annotations

import argparse

import torch

from .decoding import greedy_generate

PROVIDER_NOTE = {
    "tfp": "provider tfp: the owner (rank 0) generates the Beaver triples, so it could unmask what the client "
           "shares (the prompt, the generated tokens); use --crypten-provider ttp to rule that out",
    "ttp": "provider ttp: a third process deals the triples; neither party alone can unmask the other's values",
}


def run_private_generation(args: argparse.Namespace, sides: dict, programs: dict, prompt_tokens: int, result) -> None:
    from ..targets.crypten.generation import generate_privately

    ids = args.prompt_token_ids
    if ids:
        prompt = torch.tensor([ids])
    else:
        from ..graph_info import graph_info

        vocab = graph_info(sides["before"]).vocab_size or 2
        prompt = torch.randint(0, vocab, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    from ..targets.crypten.cli_extension import DEFAULT_PROVIDER
    from .sampling import Sampling
    from .table import print_private_steps

    provider = getattr(args, "crypten_provider", None) or DEFAULT_PROVIDER  # one machine: a measurement
    sampling = getattr(args, "sampling", None) or Sampling()
    measured = result.report.measured = dict(result.report.measured or {})
    print(f"\nprivate generation under CrypTen ({provider}): prompt {prompt.shape[1]} tokens, {args.generate} new tokens, "
          f"{sampling.describe()}")
    for side, gm in sides.items():
        run = generate_privately(gm, prompt, args.generate, provider=provider, weight_masks=args.weight_masks,
                                 timeout_s=getattr(args, "party_timeout", None) or 300.0, sampling=sampling)
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
                   "provider": provider, "sampling": sampling.record()}
        measured.setdefault(side, {})["generation"] = section
        print(f"  {side}: private tokens {run['tokens']}, plaintext {plaintext}"
              + (f", near ties at steps {near_ties}" if near_ties else ""))
        print_private_steps(decode)
    print(f"  {PROVIDER_NOTE.get(provider, '')}")
