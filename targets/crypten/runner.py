"""Run graphs privately between two CrypTen parties on this machine and measure them.

    from aero_compile.targets.crypten.runner import run_private
    measured = run_private({"before": gm, "after": rewritten}, seq_len=8)   # -> {"before": {...}, ...}

Each party is a separate process (from a fork server; the graphs travel as ``PortableGraphs``), talking
gloo over loopback;
rank 0 owns the weights, rank 1 holds the token ids and receives the logits. A party that dies ends
the run at once with an AeroError naming it (rank and role, time since the start); parties that all
wait for each other longer than ``timeout_s`` end it too; a party that works is never timed out
(``private.processes``). Every process started here is gone when this returns. For parties on separate
machines, see ``multihost.run_as_party``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.fx as fx

from aero_compile.capturing import example_input, run_graph
from aero_compile.errors import AeroError
from aero_compile.targets.private.measured import logits_error
from aero_compile.targets.private import processes
from aero_compile.targets.private.portable import PortableGraphs

from .party import CLIENT, OWNER, PARTIES, PROVIDERS, ROLE_NAMES, party_environment, run_party
from .protocol_settings import DEFAULT_SETTINGS, ProtocolSettings
from .weight_masks import DEFAULT_WEIGHT_MASKS, WEIGHT_MASK_MODES

DEFAULT_TIMEOUT_S = 120.0
# forkserver: each party is forked from a clean server process that imported ``party_preload`` once (torch,
# CrypTen, torch._dynamo), so a party starts in well under a second and never inherits this process's threads
# (jax's, if SPU ran here). "spawn" works too (a fresh interpreter per party: seconds more each); "fork" too,
# but not once jax is loaded.
START_METHOD = "forkserver"
PRELOAD = ("aero_compile.targets.crypten.party_preload",)


def party_main(rank, rendezvous, graphs: PortableGraphs, input_ids, options) -> dict:
    """Body of one party process: set CrypTen's environment and run; its figures (``run_party``)."""
    os.environ.update(party_environment(rank, rendezvous))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: do not depend on the host name
    torch.set_num_threads(1)  # the parties share the cores; their OpenMP pools must not oversubscribe
    return run_party(graphs.graphs, input_ids if rank == CLIENT else None, **options)


def launch_parties(graphs: dict[str, fx.GraphModule], input_ids: torch.Tensor, *, provider: str = "tfp",
                   timeout_s: float = DEFAULT_TIMEOUT_S, fault: dict[int, str] | None = None,
                   weight_masks: str = DEFAULT_WEIGHT_MASKS, settings: ProtocolSettings | None = None) -> dict[int, dict]:
    """Start the parties and watch them (``private.processes``: ``timeout_s`` bounds waiting, not work);
    return {rank: figures}; AeroError naming the party that failed on failure."""
    if provider not in PROVIDERS:
        raise AeroError(f"unknown CrypTen provider '{provider}': use one of {', '.join(PROVIDERS)}")
    if weight_masks not in WEIGHT_MASK_MODES:
        raise AeroError(f"unknown weight-mask mode '{weight_masks}': use one of {', '.join(WEIGHT_MASK_MODES)}")
    batch, seq_len = input_ids.shape
    ranks = range(PARTIES + 1 if provider == "ttp" else PARTIES)
    with tempfile.TemporaryDirectory(prefix="aero-crypten-") as tmp:
        rendezvous = f"file://{Path(tmp) / 'rendezvous'}"
        parties, portable = [], PortableGraphs(graphs)  # one object: packed once for all the parties
        for rank in ranks:
            options = {"batch": batch, "seq_len": seq_len, "provider": provider, "timeout_s": timeout_s,
                       "fault": (fault or {}).get(rank), "weight_masks": weight_masks, "settings": settings}
            parties.append(processes.Party(ROLE_NAMES[rank], party_main,
                                           (rank, rendezvous, portable, input_ids, options)))
        results = processes.launch_parties(parties, timeout_s=timeout_s, prefix="aero-crypten-", start_method=START_METHOD,
                                           preload=PRELOAD)
        return {rank: results[rank] for rank in (OWNER, CLIENT)}


def run_private(graphs: dict[str, fx.GraphModule], *, seq_len: int = 8, batch: int = 1, seed: int = 0,
                provider: str = "tfp", timeout_s: float = DEFAULT_TIMEOUT_S,
                fault: dict[int, str] | None = None, weight_masks: str = DEFAULT_WEIGHT_MASKS,
                settings: ProtocolSettings | None = None) -> dict[str, dict]:
    """Run each graph privately on the same random tokens; the figures the JSON ``measured`` holds.

    Rounds, bytes and seconds are the client's (rank 1) counters: the online protocol between the two
    parties. With tfp the owner's are identical; with ttp the owner's also count its requests to the
    dealer, so they are reported apart as ``owner_rounds`` / ``owner_bytes``. These are per query;
    ``offline`` is the once-per-model setup (opening W - B for every weight, ``weight_masks.py``).
    """
    first = next(iter(graphs.values()))
    input_ids = example_input(first, seq_len=seq_len, batch=batch, seed=seed)
    settings = settings or DEFAULT_SETTINGS
    parties = launch_parties(graphs, input_ids, provider=provider, timeout_s=timeout_s, fault=fault,
                             weight_masks=weight_masks, settings=settings)
    measured = {}
    for name, gm in graphs.items():
        owner, client = parties[OWNER][name], parties[CLIENT][name]
        forward = client["forward"]
        measured[name] = {
            "rounds": forward["rounds"],
            "bytes": forward["bytes"],
            "seconds": forward["seconds"],
            **logits_error(client["logits"], run_graph(gm, input_ids)),
            "by_op": forward["by_op"],
            "offline": {"rounds": client["offline"]["rounds"], "bytes": client["offline"]["bytes"]},
            "weight_masks": weight_masks,
            "settings": settings.as_dict(),
            "setup": client["setup"],
            "reveal": client["reveal"],
            "owner_rounds": owner["forward"]["rounds"],
            "owner_bytes": owner["forward"]["bytes"],
            "measured_by": "client (rank 1)",
            "provider": provider,
            "seq_len": seq_len,
            "batch": batch,
        }
    return measured
