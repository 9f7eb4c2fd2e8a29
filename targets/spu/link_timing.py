"""What one SPU message costs over loopback sockets (brpc), which the simulator-measured compute lacks.

    python -m aero_compile.targets.spu.link_timing          # prints seconds per one-way message

``calibrate spu`` times op forms in SPU's simulator (parties as threads, an in-memory link), while
``--run-private --engine spu`` runs the parties as processes over brpc on loopback. Two processes open
the same brpc link the parties open (``party.connect``) and ping-pong small messages; half the mean
round trip is the per-message cost the latency model adds (``latency.loopback_s_per_message``).
"""

from __future__ import annotations

import multiprocessing
import statistics
import time

MESSAGES = 400  # round trips per trial
TRIALS = 5


def _party(rank: int, addresses: list[str], results) -> None:
    from .party import close_link, connect

    link = connect(rank, addresses, 30.0)
    peer, payload, trials = 1 - rank, b"x" * 64, []
    for _ in range(TRIALS):
        link.barrier()
        start = time.perf_counter()
        for _ in range(MESSAGES):
            if rank == 0:
                link.send(peer, payload)
                link.recv(peer)
            else:
                link.recv(peer)
                link.send(peer, payload)
        trials.append((time.perf_counter() - start) / (2 * MESSAGES))
    close_link(link)
    if rank == 0:
        results.put(trials)


def one_way_message_seconds() -> dict:
    """Seconds per one-way brpc message between two processes on loopback: median of trials, and all trials."""
    from .party import free_addresses

    context = multiprocessing.get_context("spawn")  # SPU's native pools do not survive a fork
    addresses, results = free_addresses(2), context.Queue()
    parties = [context.Process(target=_party, args=(rank, addresses, results)) for rank in (0, 1)]
    for party in parties:
        party.start()
    trials = results.get(timeout=300)
    for party in parties:
        party.join(60)
    return {"seconds": statistics.median(trials), "trials": [round(t, 7) for t in trials],
            "statistic": f"median of {TRIALS} trials of {MESSAGES} ping-pong round trips (64-byte messages), half a round trip"}


if __name__ == "__main__":
    print(one_way_message_seconds())
