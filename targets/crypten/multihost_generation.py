"""Private generation between hosts: ``--party --generate N``, the client's prompt shared by the client alone.

    # host A, the model owner (RANK=0)            # host B, the client (RANK=1)
    aero-compile gpt2-tiny --run-private --party \\   aero-compile gpt2-tiny --run-private --party \\
        --generate 8 --tls keys/                      --generate 8 --prompt-ids 3,1,4,1,5 --tls keys/
    # host C, the dealer (RANK=2, under ttp, the default between hosts): the owner's command

One CrypTen session over our own links (``multihost``), the same session code as on one machine
(``generation.run_generation_party``): the client announces its prompt's length (public), the owner's
programs follow it; weights are shared and masked once; the K/V cache stays secret; only the client
opens each step's logits and picks the token (greedy, or ``--temperature`` / ``--top-k``). The owner
learns N and the lengths, nothing else: it prints the per-step table without tokens. The client prints
the text as it is generated (through the tokenizer when the model has one, else the ids), then the table.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from aero_compile.errors import AeroError
from aero_compile.generation.echo import TextEcho, client_tokenizer
from aero_compile.generation.sampling import Sampling
from aero_compile.generation.table import record_party_side
from aero_compile.targets.private.security import PROVIDERS as SECURITY_NOTES
from aero_compile.targets.private.security import insecure_summary, security_block

from .generation import run_generation_party
from .multihost import MULTIHOST_PROVIDER, check_prompt_holder, join_as_party, party_rank
from .party import CLIENT, OWNER, PARTIES, ROLE_NAMES
from .weight_masks import DEFAULT_WEIGHT_MASKS

CLIENT_ONLY = (("prompt", "--prompt"), ("prompt_ids", "--prompt-ids"), ("temperature", "--temperature"),
               ("top_k", "--top-k"), ("sample_seed", "--sample-seed"))


def check_party_inputs(args) -> None:
    """Before any link opens: the prompt and sampling settings are the client's alone; a generating client
    brings a prompt. One-line AeroError naming the fix."""
    if not args.party:
        return
    given = next((flag for dest, flag in CLIENT_ONLY if getattr(args, dest, None) is not None), None)
    if given is None and not getattr(args, "generate", None):
        return
    rank = party_rank(args.crypten_provider or MULTIHOST_PROVIDER)
    check_prompt_holder(rank, given)
    if rank == CLIENT and getattr(args, "generate", None) and args.prompt is None and args.prompt_ids is None:
        raise AeroError("the client of a generation between hosts brings the prompt: add --prompt TEXT or "
                        "--prompt-ids 1,2,3")


def generate_as_party(graphs: dict[str, fx.GraphModule], *, new_tokens: int, prompt_ids: list[int] | None,
                      provider: str | None = None, timeout_s: float = 120.0,
                      weight_masks: str = DEFAULT_WEIGHT_MASKS, tls: str | None = None, insecure_link: bool = False,
                      sampling: Sampling | None = None, on_token=None) -> tuple[int, str, str, dict]:
    """(rank, provider, hosts, {graph name: result}) of this party's share of the generation; the dealer's is {}."""
    rank = party_rank(provider or MULTIHOST_PROVIDER)
    check_prompt_holder(rank, "--prompt" if prompt_ids else None)
    if rank == CLIENT and not prompt_ids:
        raise AeroError("the client of a generation between hosts brings the prompt: add --prompt TEXT or "
                        "--prompt-ids 1,2,3")
    ids = torch.tensor([list(prompt_ids)]) if rank == CLIENT else None

    def work(link):
        return run_generation_party(graphs, ids, new_tokens=new_tokens, provider=provider or MULTIHOST_PROVIDER,
                                    weight_masks=weight_masks, timeout_s=timeout_s, link=link,
                                    sampling=sampling if rank == CLIENT else None,
                                    on_token=on_token if rank == CLIENT else None)

    return join_as_party(provider, timeout_s, tls, insecure_link, work)


def run_generation_cli(args, graphs: dict, result, run, provider: str) -> None:
    """``--party --generate N`` from the CLI: run, print (the client: text, then the table), fill ``measured``."""
    rank = party_rank(provider)
    echo = TextEcho(client_tokenizer(args)) if rank == CLIENT else None
    sampling = getattr(args, "sampling", None) or Sampling()
    if rank == CLIENT:
        print(f"\nprivate generation between hosts under CrypTen ({provider}): prompt {len(args.prompt_token_ids)} "
              f"tokens, {args.generate} new tokens, {sampling.describe()}")
    rank, provider, hosts, results = generate_as_party(
        graphs, new_tokens=args.generate, prompt_ids=args.prompt_token_ids, provider=provider, timeout_s=run.timeout_s,
        weight_masks=run.weight_masks, tls=run.tls, insecure_link=run.insecure_link, sampling=sampling, on_token=echo)
    if rank == PARTIES:
        print("trusted third party: served the generation's Beaver triples")
        return
    if echo:
        echo.end()
    if rank == CLIENT and run.logits_out:  # the client's own record: its prompt, tokens and the logits it opened
        from aero_compile.fileio import atomic_path

        with atomic_path(run.logits_out) as tmp:
            torch.save({"prompt_ids": torch.tensor([list(args.prompt_token_ids)]), "sampling": sampling.record(),
                        **{side: {"tokens": r["tokens"], "logits": r["logits"]} for side, r in results.items()}}, tmp)
    block = security_block(engine="crypten", provider=provider, hosts=hosts)
    measured = result.report.measured = dict(result.report.measured or {})
    prompt_tokens = next(iter(results.values()))["prompt_tokens"]
    args.party_prompt_tokens = prompt_tokens  # the analyzer's table (after this) prices the real prompt length
    if rank == OWNER:
        print(f"\nprivate generation between hosts under CrypTen ({provider}), as the model owner: the client's prompt "
              f"has {prompt_tokens} tokens, {args.generate} new tokens (the owner sees neither)")
    for side, run_result in results.items():
        decode = [{"context": s["context"], "rounds": s["rounds"], "bytes": s["bytes"], "seconds": s["seconds"]}
                  for s in run_result["steps"]]
        record_party_side(measured, side, decode=decode, role=ROLE_NAMES[rank], prompt_tokens=prompt_tokens,
                          new_tokens=args.generate, security=block, engine_fields={"provider": provider},
                          tokens=run_result["tokens"] if rank == CLIENT else None, sampling=sampling)
    print(f"  {SECURITY_NOTES['crypten', provider][1]}")
    line = insecure_summary(block)
    if line:
        print(line)
