"""Run SPU programs in this process: every party a thread over SPU's in-memory link (``spu.utils.simulation``'s
pattern), rank 0 profiled. Same protocols, same counters as separate processes; no sockets.
"""

from __future__ import annotations

import threading

import numpy as np

from aero_compile.errors import AeroError

from .config import parties, runtime_config
from .profiling import captured_native_output, parse_executions
from .session import PartySession, warm_up_program

SIMULATOR_RECEIVE_TIMEOUT_MS = 6 * 3600 * 1000


def share_inputs(io, arrays: list[np.ndarray]) -> list[list]:
    """Secret shares of each input array: [input][rank]."""
    from spu import libspu

    return [io.make_shares(np.ascontiguousarray(a, dtype=np.float32), libspu.Visibility.VIS_SECRET) for a in arrays]


def simulate(executables: list, inputs: list[list[np.ndarray]], protocol: str,
             repetitions: int = 1) -> tuple[list[np.ndarray], list[dict]]:
    """Run each executable on its inputs, after the warm-up; (outputs, profiles), the warm-up's profile first
    (``repetitions``: each executable runs that many times on the same shares, one profile per run)."""
    from spu import api, libspu

    config, world = runtime_config(protocol), parties(protocol)
    io = api.Io(world, config)
    warm_executable, warm_inputs = warm_up_program()
    jobs = [(warm_executable, share_inputs(io, warm_inputs))] + \
           [(executable, share_inputs(io, arrays)) for executable, arrays in zip(executables, inputs)]
    description = libspu.link.Desc()
    # Both parties are threads of this process: neither can die unseen, and one waits for the other's
    # local work (a d=768 layer's HE products take minutes). SPU's default 30 s receive timeout ended
    # such runs with "Get data timeout"; a wait here is only ever a slow peer.
    description.recv_timeout_ms = SIMULATOR_RECEIVE_TIMEOUT_MS
    for rank in range(world):
        description.add_party(f"party{rank}", f"thread{rank}")
    outputs: dict[int, list] = {}
    errors: list[BaseException] = []

    def party(rank: int) -> None:
        try:
            rank_config = libspu.RuntimeConfig(config)
            rank_config.enable_pphlo_profile = rank == 0
            session = PartySession(libspu.link.create_mem(description, rank), rank_config)
            outputs[rank] = [session.run(executable, [share[rank] for share in shares], repetitions if index else 1)
                             for index, (executable, shares) in enumerate(jobs)]
        except BaseException as exc:  # surfaced below, in the caller's thread
            errors.append(exc)

    with captured_native_output() as captured:
        threads = [threading.Thread(target=party, args=(rank,)) for rank in range(world)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise AeroError(f"SPU simulation failed: {_first_line(errors[0])}")
    profiles = parse_executions(captured["log"])
    if len(profiles) != 1 + (len(jobs) - 1) * repetitions:
        raise AeroError(f"internal: SPU logged {len(profiles)} profiles for {len(jobs)} programs x {repetitions}")
    results = [io.reconstruct([outputs[rank][index] for rank in range(world)]) for index in range(1, len(jobs))]
    return results, profiles


def _first_line(error: BaseException) -> str:
    """SPU's errors open with "what:" on a line of its own: the message is the next non-empty line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and line.strip() != "what:"]
    return (lines[0] if lines else type(error).__name__)[:300]
