"""Run this process as one party of a private run whose peers are started elsewhere (other machines).

Start one process per party, each with the same model, passes and sequence length::

    # machine A (model owner)                      # machine B (client)
    RANK=0 WORLD_SIZE=2 RENDEZVOUS=tcp://A:29500 \\  RANK=1 WORLD_SIZE=2 RENDEZVOUS=tcp://A:29500 \\
    DISTRIBUTED_BACKEND=gloo aero-compile gpt2-tiny  DISTRIBUTED_BACKEND=gloo aero-compile gpt2-tiny \\
        --run-private --party                           --run-private --party --private-logits-out l.pt

With ``--crypten-provider ttp`` a third process with RANK=2 (WORLD_SIZE stays 2) is the dealer.
"""

from __future__ import annotations

import os
import time

import torch
import torch.fx as fx

from aero_compile.capturing import example_input
from aero_compile.errors import AeroError, describe
from aero_compile.fileio import atomic_path
from aero_compile.targets.private.party_watch import SelfWatch, describe_party

from .party import CLIENT, PARTIES, PROVIDERS, ROLE_NAMES, run_party
from .store_board import store_board_connector
from .weight_masks import DEFAULT_WEIGHT_MASKS

REQUIRED_ENVIRONMENT = ("RANK", "WORLD_SIZE", "RENDEZVOUS", "DISTRIBUTED_BACKEND")


def party_rank(provider: str) -> int:
    """This process's rank from the environment; AeroError naming what is missing or wrong."""
    missing = [name for name in REQUIRED_ENVIRONMENT if not os.environ.get(name)]
    if missing:
        raise AeroError(f"--party needs the environment variables {', '.join(missing)} "
                        "(e.g. RANK=0 WORLD_SIZE=2 RENDEZVOUS=tcp://HOST:29500 DISTRIBUTED_BACKEND=gloo)")
    if os.environ["WORLD_SIZE"] != str(PARTIES):
        raise AeroError(f"WORLD_SIZE must be {PARTIES} (model owner and client), got {os.environ['WORLD_SIZE']}")
    try:
        rank = int(os.environ["RANK"])
    except ValueError:
        raise AeroError(f"RANK must be an integer, got '{os.environ['RANK']}'") from None
    highest = PARTIES if provider == "ttp" else PARTIES - 1
    if not 0 <= rank <= highest:
        raise AeroError(f"RANK must be between 0 and {highest} with the {provider} provider, got {rank}")
    return rank


def run_as_party(graphs: dict[str, fx.GraphModule], *, seq_len: int, batch: int = 1, seed: int = 0,
                 provider: str = "tfp", timeout_s: float = 120.0, logits_out: str | None = None,
                 weight_masks: str = DEFAULT_WEIGHT_MASKS) -> dict:
    """Join the run as RANK; return this party's figures (the client's carry no logits, see logits_out)."""
    if provider not in PROVIDERS:
        raise AeroError(f"unknown CrypTen provider '{provider}': use one of {', '.join(PROVIDERS)}")
    rank = party_rank(provider)
    first = next(iter(graphs.values()))
    input_ids = example_input(first, seq_len=seq_len, batch=batch, seed=seed) if rank == CLIENT else None
    roles = {r: ROLE_NAMES[r] for r in range(PARTIES + 1 if provider == "ttp" else PARTIES)}
    rendezvous = os.environ["RENDEZVOUS"]
    # The watch ends this process with one line once it has waited --party-timeout with no peer working
    # (a lone party: no peer ever connected); a peer that dies makes the next call fail, named below.
    with SelfWatch(rank, roles, timeout_s, rendezvous, store_board_connector(rank, rendezvous)) as watch:
        try:
            results = run_party(graphs, input_ids, batch=batch, seq_len=seq_len, provider=provider,
                                timeout_s=timeout_s, weight_masks=weight_masks)
        except RuntimeError as exc:  # gloo: a peer went away mid-run
            elapsed = time.time() - watch.start
            raise AeroError(f"{describe_party(rank, roles)} lost its peers {elapsed:.1f} s after it started: "
                            f"{watch.blame_after_failure()} ({describe(exc, 120)})") from None
    if rank == PARTIES:
        return {}  # the dealer has no figures of its own
    if rank == CLIENT and logits_out:
        with atomic_path(logits_out) as tmp:
            torch.save({name: r["logits"] for name, r in results.items()} | {"input_ids": input_ids}, tmp)
    measured = {}
    for name, result in results.items():
        forward = result["forward"]
        measured[name] = {"rounds": forward["rounds"], "bytes": forward["bytes"], "seconds": forward["seconds"],
                          "max_abs_error": None, "argmax_agreement": None, "by_op": forward["by_op"],
                          "setup": result["setup"], "reveal": result["reveal"], "provider": provider,
                          "offline": {"rounds": result["offline"]["rounds"], "bytes": result["offline"]["bytes"]},
                          "weight_masks": weight_masks,
                          "seq_len": seq_len, "batch": batch, "rank": rank,
                          "role": ROLE_NAMES.get(rank, str(rank)), "measured_by": f"{ROLE_NAMES[rank]} (rank {rank})"}
    return measured
