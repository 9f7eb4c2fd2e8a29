"""Run graphs privately between two CrypTen parties on this machine and measure them.

    from aero_compile.targets.crypten.runner import run_private
    measured = run_private({"before": gm, "after": rewritten}, seq_len=8)   # -> {"before": {...}, ...}

Each party is a separate process (forked, so it inherits the graphs), talking gloo over loopback;
rank 0 owns the weights, rank 1 holds the token ids and receives the logits. A party that dies or
never connects ends the run with an AeroError within ``timeout_s``, and every process started here
is gone when this returns. For parties on separate machines, see ``serve_party``.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.fx as fx

from aero_compile.capture import example_input, run_graph
from aero_compile.errors import AeroError, describe

from aero_compile.targets.private.measured import logits_error

from .party import CLIENT, OWNER, PARTIES, PROVIDERS, ROLE_NAMES, party_environment, run_party

DEFAULT_TIMEOUT_S = 120.0
_GRACE_S = 5.0  # how long survivors get to notice a dead peer before they are killed


def _party_main(rank, rendezvous, graphs, input_ids, options, result_dir):
    """Body of one forked party: set CrypTen's environment, run, leave the result or the error in a file."""
    os.environ.update(party_environment(rank, rendezvous))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: do not depend on the host name
    torch.set_num_threads(1)  # two parties share the cores; forked OpenMP pools must not oversubscribe
    out = Path(result_dir) / f"rank{rank}"
    try:
        result = run_party(graphs, input_ids if rank == CLIENT else None, **options)
        torch.save(result, f"{out}.tmp")
        os.replace(f"{out}.tmp", f"{out}.pt")
    except BaseException as exc:  # report any failure to the parent in one line
        Path(f"{out}.err").write_text(describe(exc) + "\n" + traceback.format_exc())
        os._exit(1)
    os._exit(0)


def _stop(processes) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + 3.0
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _failure(result_dir: Path, processes) -> str:
    """What went wrong, root cause first: a party that died without a word, then the parties' errors."""
    died, errors = [], []
    for rank, process in enumerate(processes):
        role = ROLE_NAMES.get(rank, f"rank {rank}")
        err = result_dir / f"rank{rank}.err"
        if err.exists():
            errors.append(f"{role} failed: {err.read_text().splitlines()[0][:200]}")
        elif process.exitcode not in (0, None):
            died.append(f"{role} died (exit code {process.exitcode})")
    return "; then ".join(died + errors) or "a party did not finish"


def launch_parties(graphs: dict[str, fx.GraphModule], input_ids: torch.Tensor, *, provider: str = "tfp",
                   timeout_s: float = DEFAULT_TIMEOUT_S, fault: dict[int, str] | None = None) -> dict[int, dict]:
    """Fork the parties, wait for them (at most ``timeout_s``), return {rank: figures}; AeroError on failure."""
    if provider not in PROVIDERS:
        raise AeroError(f"unknown CrypTen provider '{provider}': use one of {', '.join(PROVIDERS)}")
    batch, seq_len = input_ids.shape
    context = multiprocessing.get_context("fork")  # the children inherit the graphs (they do not pickle)
    ranks = range(PARTIES + 1 if provider == "ttp" else PARTIES)
    with tempfile.TemporaryDirectory(prefix="aero-crypten-") as tmp:
        result_dir = Path(tmp)
        rendezvous = f"file://{result_dir / 'rendezvous'}"
        processes = []
        try:
            for rank in ranks:
                options = {"batch": batch, "seq_len": seq_len, "provider": provider, "timeout_s": timeout_s,
                           "fault": (fault or {}).get(rank)}
                process = context.Process(target=_party_main, name=f"aero-crypten-rank{rank}", daemon=True,
                                          args=(rank, rendezvous, graphs, input_ids, options, tmp))
                process.start()
                processes.append(process)
            _wait(processes, timeout_s, result_dir)
            return {rank: torch.load(result_dir / f"rank{rank}.pt", weights_only=False) for rank in (OWNER, CLIENT)}
        finally:
            _stop(processes)


def _wait(processes, timeout_s: float, result_dir: Path) -> None:
    deadline = time.monotonic() + timeout_s
    failed_at = None
    while any(p.is_alive() for p in processes):
        now = time.monotonic()
        if failed_at is None and any(p.exitcode not in (0, None) for p in processes):
            failed_at = now  # give the survivors a moment to fail on their own, with their message
        if now > deadline or (failed_at is not None and now - failed_at > _GRACE_S):
            break
        time.sleep(0.05)
    if all(p.exitcode == 0 for p in processes):
        return
    if not any(p.exitcode not in (0, None) for p in processes):
        raise AeroError(f"private run timed out after {timeout_s:.0f} s (a party hung or never connected)")
    raise AeroError(f"private run failed: {_failure(result_dir, processes)}")


def run_private(graphs: dict[str, fx.GraphModule], *, seq_len: int = 8, batch: int = 1, seed: int = 0,
                provider: str = "tfp", timeout_s: float = DEFAULT_TIMEOUT_S,
                fault: dict[int, str] | None = None) -> dict[str, dict]:
    """Run each graph privately on the same random tokens; the figures the JSON ``measured`` holds.

    Rounds, bytes and seconds are the client's (rank 1) counters: the online protocol between the two
    parties. With tfp the owner's are identical; with ttp the owner's also count its requests to the
    dealer, so they are reported apart as ``owner_rounds`` / ``owner_bytes``.
    """
    first = next(iter(graphs.values()))
    input_ids = example_input(first, seq_len=seq_len, batch=batch, seed=seed)
    parties = launch_parties(graphs, input_ids, provider=provider, timeout_s=timeout_s, fault=fault)
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
