"""Run graphs privately between two CrypTen parties on this machine and measure them.

    from aero_compile.targets.crypten.runner import run_private
    measured = run_private({"before": gm, "after": rewritten}, seq_len=8)   # -> {"before": {...}, ...}

Each party is a separate process (from a fork server; the graphs travel as ``PortableGraphs``), talking
over our own links on loopback (``communicator.LinkCommunicator`` over ``private.link.mesh``: typed frames,
no pickles, addressable so that an emulated link can sit between the parties). ``transport="gloo"``
keeps CrypTen's own torch.distributed communicator, for comparison: both count exactly the same rounds
and bytes (tests/test_link_crypten.py), and their loopback speed is comparable (docs/link.md: medians
of alternated runs, sometimes one ahead, sometimes the other, on this loaded machine), so every run
takes one code path, with no pickles.
rank 0 owns the weights, rank 1 holds the token ids and receives the logits. A party that dies ends
the run at once with an AeroError naming it (rank and role, time since the start); parties that all
wait for each other longer than ``timeout_s`` end it too; a party that works is never timed out
(``private.processes``). Every process started here is gone when this returns. For parties on separate
machines, see ``multihost.run_as_party``.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.fx as fx

from aero_compile.capturing import example_input, run_graph
from aero_compile.errors import AeroError
from aero_compile.targets.private.measured import logits_error
from aero_compile.targets.private import processes
from aero_compile.targets.private.portable import PortableGraphs

from .party import (CLIENT, OWNER, PARTIES, PROVIDERS, ROLE_NAMES, backstop_timeout, link_plan, party_environment,
                    run_party)
from aero_compile.targets.private.link.selection import loopback_record
from aero_compile.targets.private.link.process import RelayProcess
from aero_compile.targets.private.link.spec import LinkSpec

from .protocol_settings import DEFAULT_SETTINGS, ProtocolSettings
from .weight_masks import DEFAULT_WEIGHT_MASKS, WEIGHT_MASK_MODES

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_REPETITIONS = 3  # online forward passes timed per graph: the median is reported
# forkserver: each party is forked from a clean server process that imported ``party_preload`` once (torch,
# CrypTen, torch._dynamo), so a party starts in well under a second and never inherits this process's threads
# (jax's, if SPU ran here). "spawn" works too (a fresh interpreter per party: seconds more each); "fork" too,
# but not once jax is loaded.
START_METHOD = "forkserver"
PRELOAD = ("aero_compile.targets.crypten.party_preload",)


def party_main(rank, rendezvous, graphs: PortableGraphs, input_ids, options) -> dict:
    """Body of one party process: set CrypTen's environment and run; its figures (``run_party``)."""
    if options.get("link") is None:  # gloo
        os.environ.update(party_environment(rank, rendezvous))
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: do not depend on the host name
    torch.set_num_threads(1)  # the parties share the cores; their OpenMP pools must not oversubscribe
    return run_party(graphs.graphs, input_ids if rank == CLIENT else None, **options)


def free_loopback_ports(count: int) -> dict[int, tuple[str, int]]:
    """``count`` loopback ports free now, for ranks 0.. (the OS picks them; held only while picking)."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
    ports = {rank: sock.getsockname() for rank, sock in enumerate(held)}
    for sock in held:
        sock.close()
    return ports


def launch_parties(graphs: dict[str, fx.GraphModule], input_ids: torch.Tensor, *, provider: str = "tfp",
                   timeout_s: float = DEFAULT_TIMEOUT_S, fault: dict[int, str] | None = None,
                   weight_masks: str = DEFAULT_WEIGHT_MASKS, settings: ProtocolSettings | None = None,
                   repetitions: int = 1, transport: str = "link", link: LinkSpec | None = None,
                   tls: str | None = None, tap_dir: str | None = None,
                   link_record: dict | None = None) -> dict[int, dict]:
    """Start the parties and watch them (``private.processes``: ``timeout_s`` bounds waiting, not work);
    return {rank: figures}; AeroError naming the party that failed on failure.

    ``link``: every connection between the parties (the dealer's too) goes through a relay process
    emulating it (``private.link``); ``link_record`` (a dict, if given) then receives the link's settings
    and the relay's CPU seconds. ``tls``: a certificates folder (``private.link.tls``): mutual TLS on every
    connection. ``tap_dir``: the relay writes the bytes it forwards there (tests look into them).
    """
    if provider not in PROVIDERS:
        raise AeroError(f"unknown CrypTen provider '{provider}': use one of {', '.join(PROVIDERS)}")
    if weight_masks not in WEIGHT_MASK_MODES:
        raise AeroError(f"unknown weight-mask mode '{weight_masks}': use one of {', '.join(WEIGHT_MASK_MODES)}")
    ranks = range(PARTIES + 1 if provider == "ttp" else PARTIES)
    if transport != "link" and (link or tls):
        raise AeroError("internal: an emulated link or TLS needs the link transport")
    listening = free_loopback_ports(len(ranks) - 1)  # every rank but the last listens for the ranks above it
    relay = RelayProcess(link, [listening[r] for r in sorted(listening)], tap_dir=tap_dir) if link else None
    dial = {r: ("127.0.0.1", relay.ports[i]) for i, r in enumerate(sorted(listening))} if relay else listening
    try:
        results = _launch(graphs, input_ids, ranks, listening, dial, provider=provider, timeout_s=timeout_s,
                          fault=fault, weight_masks=weight_masks, settings=settings, repetitions=repetitions,
                          transport=transport, tls=tls)
    finally:
        cpu = relay.stop() if relay else None
    if link_record is not None and link is not None:
        link_record.update(link.record(emulated=True), relay_cpu_seconds=cpu)
    return results


def _launch(graphs, input_ids, ranks, listening, dial, *, provider, timeout_s, fault, weight_masks, settings,
            repetitions, transport, tls) -> dict[int, dict]:
    batch, seq_len = input_ids.shape
    with tempfile.TemporaryDirectory(prefix="aero-crypten-") as tmp:
        rendezvous = f"file://{Path(tmp) / 'rendezvous'}"
        parties, portable = [], PortableGraphs(graphs)  # one object: packed once for all the parties
        for rank in ranks:
            link = None
            if transport == "link":
                # the links' own deadline is a backstop: the launcher's watch bounds the waiting
                link = link_plan(rank, provider, dial, listen=listening.get(rank), advertise=dial.get(rank),
                                 timeout_s=backstop_timeout(timeout_s), tls=tls)
            options = {"batch": batch, "seq_len": seq_len, "provider": provider, "timeout_s": timeout_s,
                       "fault": (fault or {}).get(rank), "weight_masks": weight_masks, "settings": settings,
                       "repetitions": repetitions, "link": link}
            parties.append(processes.Party(ROLE_NAMES[rank], party_main,
                                           (rank, rendezvous, portable, input_ids, options)))
        results = processes.launch_parties(parties, timeout_s=timeout_s, prefix="aero-crypten-", start_method=START_METHOD,
                                           preload=PRELOAD)
        return {rank: results[rank] for rank in (OWNER, CLIENT)}


def run_private(graphs: dict[str, fx.GraphModule], *, seq_len: int = 8, batch: int = 1, seed: int = 0,
                provider: str = "tfp", timeout_s: float = DEFAULT_TIMEOUT_S,
                fault: dict[int, str] | None = None, weight_masks: str = DEFAULT_WEIGHT_MASKS,
                settings: ProtocolSettings | None = None, repetitions: int = DEFAULT_REPETITIONS,
                link: LinkSpec | None = None, tls: str | None = None) -> dict[str, dict]:
    """Run each graph privately on the same random tokens; the figures the JSON ``measured`` holds.

    ``seconds`` is the median of ``repetitions`` online forward passes on the same shares (``timing``
    lists them all); setup and reveal are apart. ``link``: the parties (the dealer too) talk through an
    emulated link (``private.link``); the record then says so (``link``) with the relay's CPU seconds,
    which no party's figures include. ``tls``: mutual TLS with the certificates in that folder.

    Rounds, bytes and seconds are the client's (rank 1) counters: the online protocol between the two
    parties. With tfp the owner's are identical; with ttp the owner's also count its requests to the
    dealer, so they are reported apart as ``owner_rounds`` / ``owner_bytes``. These are per query;
    ``offline`` is the once-per-model setup (opening W - B for every weight, ``weight_masks.py``).
    """
    first = next(iter(graphs.values()))
    input_ids = example_input(first, seq_len=seq_len, batch=batch, seed=seed)
    settings = settings or DEFAULT_SETTINGS
    record: dict = {}
    parties = launch_parties(graphs, input_ids, provider=provider, timeout_s=timeout_s, fault=fault,
                             weight_masks=weight_masks, settings=settings, repetitions=repetitions, link=link,
                             tls=tls, link_record=record)
    measured = {}
    for name, gm in graphs.items():
        owner, client = parties[OWNER][name], parties[CLIENT][name]
        forward = client["forward"]
        measured[name] = {
            "rounds": forward["rounds"],
            "bytes": forward["bytes"],
            "seconds": forward["seconds"],
            "timing": client["timing"],
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
            "link": {k: record[k] for k in ("bandwidth_mbps", "rtt_ms", "emulated")} if link else loopback_record(),
            "relay_cpu_seconds": record.get("relay_cpu_seconds"),
            "tls": bool(tls),
            "provider": provider,
            "seq_len": seq_len,
            "batch": batch,
        }
    return measured
