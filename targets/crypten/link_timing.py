"""Time calibration forms between CrypTen parties started exactly as ``--run-private`` starts them.

    from aero_compile.targets.crypten.link_timing import measure_like_a_run
    results = measure_like_a_run([("softmax", 64, 32, 0)], repetitions=5, provider="ttp")

A compute figure is only worth what its program resembles the one it predicts. ``calibrate.measure``
runs the forms under ``crypten.mpc.run_multiprocess`` (gloo, every party with torch's default thread
pool): good for rounds and bytes, which do not depend on it, but two 2-thread parties on two cores
oversubscribe them, and gloo's per-round cost is not ``LinkCommunicator``'s. Timed that way, CrypTen's
forms took up to twice what the same ops take inside a private run. Here every party is a process of
``private.processes`` (forkserver, one torch thread each, as ``runner.party_main``), talking over our own
links on loopback (``communicator.LinkCommunicator``), with the provider the prediction is for: under
``ttp`` the dealer is a third process and the owner's requests to it are part of the time, as in a run.
"""

from __future__ import annotations

import torch

from aero_compile.targets.private import processes

from .party import CLIENT, OWNER, PARTIES, PROVIDERS, ROLE_NAMES, backstop_timeout, link_plan
from .protocol_settings import ProtocolSettings

DEFAULT_TIMEOUT_S = 240.0


def _timing_party(rank: int, plan, cases: list[tuple], settings: ProtocolSettings | None, repetitions: int,
                  provider: str, timeout_s: float):
    """One party: the dealer serves triples until rank 0 ends the session; the two parties time the cases."""
    from .calibrate import measure_in_party
    from .party import _init_crypten
    from .weight_masks import install_dealer_functions

    torch.set_num_threads(1)  # as ``runner.party_main``: the parties share the cores
    crypten = _init_crypten(provider, timeout_s, settings, plan)
    if rank == PARTIES:
        install_dealer_functions()
        crypten.mpc.provider.TTPServer()
        return None
    crypten.init()
    try:  # both parties run every case (each call is a protocol between them)
        return measure_in_party(cases, settings, repetitions)
    finally:
        crypten.uninit()


def measure_like_a_run(cases: list[tuple], settings: ProtocolSettings | None = None, repetitions: int = 1,
                       provider: str = "tfp", timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict]:
    """``calibrate.measure``'s (form, rows, length, width) cases timed between parties set up as in a private
    run under ``provider``; the client's figures, as ``runner.run_private`` reports a run's (without the
    analyzer's steps: the caller adds them)."""
    from .runner import PRELOAD, START_METHOD, free_loopback_ports

    if provider not in PROVIDERS:
        raise ValueError(f"unknown CrypTen provider '{provider}'")
    ranks = range(PARTIES + 1 if provider == "ttp" else PARTIES)
    listening = free_loopback_ports(len(ranks) - 1)  # every rank but the last listens for the ranks above it
    parties = []
    for rank in ranks:
        plan = link_plan(rank, provider, listening, listen=listening.get(rank), advertise=listening.get(rank),
                         timeout_s=backstop_timeout(timeout_s))
        parties.append(processes.Party(ROLE_NAMES[rank], _timing_party,
                                       (rank, plan, cases, settings, repetitions, provider, timeout_s)))
    results = processes.launch_parties(parties, timeout_s=timeout_s, prefix="aero-crypten-timing-",
                                       start_method=START_METHOD, preload=PRELOAD)
    client = results[CLIENT]  # as a private run reports: the client's counters (ttp: the owner's count the dealer too)
    if not client:
        raise RuntimeError(f"the CrypTen parties returned no measurements (owner: {bool(results[OWNER])})")
    return client
