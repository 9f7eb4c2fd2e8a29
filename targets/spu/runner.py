"""Run graphs privately under SPU and measure them: the figures the JSON ``measured`` block holds.

    from aero_compile.targets.spu.runner import run_private
    measured = run_private({"before": gm, "after": rewritten}, seq_len=8, protocol="cheetah")

``mode="simulator"`` runs the parties as threads in this process (SPU's in-memory link);
``mode="processes"`` as separate OS processes over loopback sockets (SPU's brpc link, ``party.py``).
Both run the same compiled programs and count the same bytes.
"""

from __future__ import annotations

import time

import torch
import torch.fx as fx

from aero_compile.capturing import example_input, run_graph
from aero_compile.errors import AeroError
from aero_compile.targets.private.measured import logits_error

from .config import check_protocol
from .lowering import SpuProgram

DEFAULT_TIMEOUT_S = 300.0
_PROGRAMS: dict[tuple, SpuProgram] = {}  # (id(gm), batch, seq_len) -> compiled program, for repeated runs


def program_for(gm: fx.GraphModule, batch: int, seq_len: int) -> SpuProgram:
    """The compiled program of ``gm`` at [batch, seq_len] (cached while ``gm`` lives)."""
    key = (id(gm), batch, seq_len)
    cached = _PROGRAMS.get(key)
    if cached is None or cached.gm is not gm:
        cached = _PROGRAMS[key] = SpuProgram(gm, batch=batch, seq_len=seq_len)
        cached.executable  # noqa: B018 (compile now: time it apart from the run)
    return cached


def measured_record(profile: dict, logits, gm, input_ids, *, protocol: str, seq_len: int, batch: int,
                    setup: dict, compile_seconds: float, mode: str) -> dict:
    """One graph's ``measured`` entry (``engine: spu``)."""
    return {
        "engine": "spu", "protocol": protocol,
        "rounds": profile["rounds"], "bytes": profile["bytes"], "seconds": profile["seconds"],
        **logits_error(torch.as_tensor(logits), run_graph(gm, input_ids)),
        "by_op": profile["by_op"], "sent_bytes": profile["sent_bytes"], "received_bytes": profile["received_bytes"],
        "setup": {k: setup[k] for k in ("rounds", "bytes", "seconds")},
        "compile_seconds": round(compile_seconds, 3),
        "measured_by": "model owner (rank 0): bytes sent + received, rounds = messages sent",
        "mode": mode, "seq_len": seq_len, "batch": batch,
    }


def run_private(graphs: dict[str, fx.GraphModule], *, seq_len: int = 8, batch: int = 1, seed: int = 0,
                protocol: str = "cheetah", mode: str = "simulator", timeout_s: float = DEFAULT_TIMEOUT_S,
                fault: dict[int, str] | None = None) -> dict[str, dict]:
    """Run each graph under SPU on the same random tokens; {name: measured record}."""
    check_protocol(protocol)
    if mode not in ("simulator", "processes"):
        raise AeroError(f"unknown SPU run mode '{mode}': use simulator or processes")
    first = next(iter(graphs.values()))
    input_ids = example_input(first, seq_len=seq_len, batch=batch, seed=seed)
    start = time.perf_counter()
    programs = {name: program_for(gm, batch, seq_len) for name, gm in graphs.items()}
    compile_seconds = time.perf_counter() - start
    if mode == "simulator":
        from .simulator import simulate

        inputs = [p.client_inputs(input_ids) + p.owner_inputs() for p in programs.values()]
        logits, profiles = simulate([p.executable for p in programs.values()], inputs, protocol)
    else:
        from .party import run_parties

        logits, profiles = run_parties(programs, input_ids, protocol=protocol, timeout_s=timeout_s, fault=fault)
    setup = profiles[0]
    return {name: measured_record(profile, out, graphs[name], input_ids, protocol=protocol, seq_len=seq_len,
                                  batch=batch, setup=setup, compile_seconds=compile_seconds, mode=mode)
            for (name, profile), out in zip(zip(graphs, profiles[1:]), logits)}
