"""Private generation between hosts under SPU: ``--spu-party RANK --generate N``, the prompt the client's alone.

    # host A, the model owner                         # host B, the client
    aero-compile gpt2-tiny --run-private \\             aero-compile gpt2-tiny --run-private \\
        --engine spu --spu-party 0 \\                       --engine spu --spu-party 1 \\
        --spu-addresses A:9530,B:9531 \\                    --spu-addresses A:9530,B:9531 \\
        --generate 8 --tls keys/                          --generate 8 --prompt-ids 3,1,4,1,5 --tls keys/

The session code is the single-machine one (``generation_party.generation_session``, ``generation.
build_steps`` / ``session_plan``), run over this party's link instead of a spawned process's: the client
announces its prompt's length and N over the typed wire (public: the programs' shapes follow them), the
owner answers with its public norm scales; each side (before, after the passes) is one session on the same
link: the owner's values shared once, the K/V cache kept as each party's shares, only the client opens
each step's logits and picks the token (greedy, or sampled by the client: ``generation.sampling``). The
owner learns N and the prompt's length, nothing else, and prints the per-step table without tokens; the
client prints the tokens as they come, then the table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aero_compile.errors import AeroError
from aero_compile.generation.echo import TextEcho, client_tokenizer
from aero_compile.generation.sampling import Sampling
from aero_compile.generation.table import record_party_side
from aero_compile.targets.private.security import PROVIDERS as SECURITY_NOTES
from aero_compile.targets.private.security import insecure_summary, security_block

from .config import CLIENT, OWNER, ROLE_NAMES
from .generation import build_steps, session_plan
from .generation_party import generation_session
from .party import close_link
from .lowering import owner_scales
from .multihost import (announce_prompt, blank_weights, check_prompt_holder, link_files, open_party_link,
                        receive_prompt, share_setup)
from .profiling import captured_native_output, parse_executions


def generate_as_party(graphs: dict, *, rank: int, addresses: list[str], new_tokens: int,
                      prompt_ids: list[int] | None, protocol: str, timeout_s: float, tls: str | None = None,
                      insecure_link: bool = False, echo: TextEcho | None = None,
                      sampling: Sampling | None = None) -> tuple[str, dict]:
    """(hosts, {side: this party's result}) of a generation between hosts; the client's results carry the tokens."""
    from aero_compile.generation import derive_programs
    from aero_compile.graph_info import graph_info

    check_prompt_holder(rank, prompt_ids)
    if rank == CLIENT and not prompt_ids:
        raise AeroError("the client of a generation between hosts brings the prompt: add --prompt TEXT or "
                        "--prompt-ids 1,2,3")
    hosts, files = link_files(rank, tls, insecure_link)
    if rank != OWNER:
        blank_weights(graphs.values())
    programs = {side: derive_programs(gm) for side, gm in graphs.items()}
    info = graph_info(next(iter(graphs.values())))
    vocab = info.vocab_size
    link = open_party_link(rank, addresses, timeout_s, files)
    prompt_tokens = len(prompt_ids) if rank == CLIENT else 0
    if rank == CLIENT:
        announce_prompt(link, prompt_tokens, new_tokens)
    elif rank == OWNER:
        prompt_tokens = receive_prompt(link.recv(CLIENT), info.max_seq_len, new_tokens)
    # the owner calibrates the norms' scales on tokens of its own choosing at the prompt's length
    prompt_tokens, scales = share_setup(link, rank, programs,
                                        lambda side, length: owner_scales(programs[side].prefill, vocab, 1, length),
                                        prompt_tokens)
    one_hot = F.one_hot(torch.tensor([list(prompt_ids)]), vocab).float().numpy() if rank == CLIENT else None
    results = {}
    for side in graphs:
        steps = build_steps(programs[side], prompt_tokens, new_tokens, vocab, scales=scales[side])
        plan, arrays = session_plan(steps)
        for entry, step in zip(plan, steps):
            entry["code"] = step.executable.SerializeToString()
        with captured_native_output() as captured:
            result = generation_session(link, plan, arrays if rank == OWNER else None, one_hot, protocol,
                                        sampling=sampling if rank == CLIENT else None,
                                        on_token=echo.side(side) if echo is not None else None)
        profiles = parse_executions(captured["log"])
        if len(profiles) != len(plan) + 1:
            raise AeroError(f"internal: this party logged {len(profiles)} profiles for {len(plan) + 1} executions")
        result["decode"] = [{"context": prompt_tokens + index, "rounds": p["rounds"], "bytes": p["bytes"],
                             "seconds": p["seconds"]} for index, p in enumerate(profiles[1:])]
        result["setup"] = {k: profiles[0][k] for k in ("rounds", "bytes", "seconds")}
        result["prompt_tokens"] = prompt_tokens
        results[side] = result
    close_link(link)
    return hosts, results


def _received(view: list[dict]) -> dict:
    """The owner's record of the messages that reached it outside the runtime (``generation_party``: header,
    sizes, share meta), as a count and a digest: equal across prompts of one length when nothing leaks."""
    import hashlib
    import json

    text = json.dumps(view, sort_keys=True, default=str)
    return {"messages": len(view), "digest": hashlib.sha256(text.encode()).hexdigest()[:16]}


def run_generation_cli(args, graphs: dict, result, run, protocol: str, addresses: list[str]) -> None:
    """``--spu-party RANK --generate N`` from the CLI: run, print (the client: tokens, then the table), fill
    ``measured.before/after.generation`` (the owner's without tokens)."""
    rank = args.spu_party
    ids = getattr(args, "prompt_token_ids", None)
    echo = TextEcho(client_tokenizer(args)) if rank == CLIENT else None
    sampling = getattr(args, "sampling", None) or Sampling()
    if rank == CLIENT:
        print(f"\nprivate generation between hosts under SPU {protocol}, as the client: prompt {len(ids)} tokens, "
              f"{args.generate} new tokens, {sampling.describe()}")
    hosts, results = generate_as_party(graphs, rank=rank, addresses=addresses, new_tokens=args.generate,
                                       prompt_ids=ids, protocol=protocol, timeout_s=run.timeout_s, tls=run.tls,
                                       insecure_link=run.insecure_link, echo=echo, sampling=sampling)
    if echo is not None:
        echo.end()
    prompt_tokens = next(iter(results.values()))["prompt_tokens"]
    args.party_prompt_tokens = prompt_tokens  # the analyzer's table (after this) prices the real prompt length
    role = ROLE_NAMES.get(rank, f"rank {rank}")
    if rank != CLIENT:
        print(f"\nprivate generation between hosts under SPU {protocol}, as the {role}: the client's prompt has "
              f"{prompt_tokens} tokens, {args.generate} new tokens (this party sees neither)")
    if rank == CLIENT and run.logits_out:  # the client's own record: its prompt, tokens and the logits it opened
        from aero_compile.fileio import atomic_path

        with atomic_path(run.logits_out) as tmp:
            torch.save({"prompt_ids": torch.tensor([list(ids)]), "sampling": sampling.record(),
                        **{side: {"tokens": r["tokens"], "logits": torch.as_tensor(r["logits"])}
                           for side, r in results.items()}}, tmp)
    block = security_block(engine="spu", provider=protocol, hosts=hosts)
    measured = result.report.measured = dict(result.report.measured or {})
    for side, side_result in results.items():
        section = record_party_side(
            measured, side, decode=side_result["decode"], role=role, prompt_tokens=prompt_tokens,
            new_tokens=args.generate, security=block,
            engine_fields={"setup": side_result["setup"], "engine": "spu", "provider": protocol, "mode": "multihost"},
            tokens=side_result["tokens"] if rank == CLIENT else None, sampling=sampling)
        if "view" in side_result:  # the owner: what reached it outside the runtime, for a check across prompts
            section["received"] = _received(side_result["view"])
    note = SECURITY_NOTES.get(("spu", protocol), (None, ""))[1]
    if note:
        print(f"  {note}")
    line = insecure_summary(block)
    if line:
        print(line)
