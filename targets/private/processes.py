"""Run the parties of a private run as forked processes on this machine, with a timeout and one-line errors.

    results = launch_parties([Party("model owner", owner_main, (graphs,)),
                              Party("client", client_main, (graphs, input_ids))], timeout_s=120)

Each party's function runs in its own process (forked, so it inherits graphs that do not pickle, or
spawned) and returns a picklable result. A party that raises, dies or hangs ends the run with one AeroError line
that names it (root cause first: a party that died without a word, then the others' errors), within
``timeout_s``; every process started here is gone when ``launch_parties`` returns. An engine's party
function opens its own links (gloo, brpc, ...); this module knows nothing of them.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from aero_compile.errors import AeroError, describe

GRACE_S = 5.0  # how long survivors get to notice a dead peer (and say so) before they are killed


@dataclass
class Party:
    """One party: its role (named in errors), the function it runs and that function's arguments."""

    role: str
    main: Callable
    args: tuple = ()
    output_log: bool = False  # send the process's fd 1 and 2 (native libraries' logs) to a file, returned


def _party_process(party: Party, index: int, result_dir: str) -> None:
    out = Path(result_dir) / f"party{index}"
    if party.output_log:
        log = os.open(f"{out}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
    try:
        result = party.main(*party.args)
        with open(f"{out}.tmp", "wb") as handle:
            pickle.dump(result, handle)
        os.replace(f"{out}.tmp", f"{out}.pkl")
    except BaseException as exc:  # report any failure to the parent in one line
        message = str(exc) if isinstance(exc, AeroError) else describe(exc)  # ours already say what to do
        Path(f"{out}.err").write_text(message + "\n" + traceback.format_exc())
        os._exit(1)
    os._exit(0)


def stop(processes) -> None:
    """Terminate, then kill, every process still alive."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + 3.0
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def failure(result_dir: Path, parties: list[Party], processes) -> str:
    """What went wrong, root cause first: a party that died without a word, then the parties' errors."""
    died, errors = [], []
    for index, (party, process) in enumerate(zip(parties, processes)):
        err = result_dir / f"party{index}.err"
        if err.exists():
            errors.append(f"{party.role} failed: {err.read_text().splitlines()[0][:200]}")
        elif process.exitcode not in (0, None):
            died.append(f"{party.role} died (exit code {process.exitcode})")
    return "; then ".join(died + errors) or "a party did not finish"


def wait(parties: list[Party], processes, timeout_s: float, result_dir: Path) -> None:
    """Return when every party exited 0; AeroError naming the failed or hung party otherwise."""
    deadline = time.monotonic() + timeout_s
    failed_at = None
    while any(p.is_alive() for p in processes):
        now = time.monotonic()
        if failed_at is None and any(p.exitcode not in (0, None) for p in processes):
            failed_at = now  # give the survivors a moment to fail on their own, with their message
        if now > deadline or (failed_at is not None and now - failed_at > GRACE_S):
            break
        time.sleep(0.05)
    if all(p.exitcode == 0 for p in processes):
        return
    if not any(p.exitcode not in (0, None) for p in processes):
        hung = [party.role for party, process in zip(parties, processes) if process.is_alive()]
        raise AeroError(f"private run timed out after {timeout_s:.0f} s: {' and '.join(hung)} still waiting "
                        "(a party hung or never connected)")
    raise AeroError(f"private run failed: {failure(result_dir, parties, processes)}")


def launch_parties(parties: list[Party], *, timeout_s: float, prefix: str = "aero-private-",
                   start_method: str = "fork") -> list[dict]:
    """Start the parties, wait (at most ``timeout_s``), return their results in order (with ``"log"``, the
    process's native output, where the party asked for it); AeroError on failure.

    ``fork`` lets the children inherit graphs that do not pickle; ``spawn`` starts clean interpreters
    (for engines whose native thread pools do not survive a fork: the arguments must pickle).
    """
    context = multiprocessing.get_context(start_method)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        result_dir = Path(tmp)
        processes = []
        try:
            for index, party in enumerate(parties):
                process = context.Process(target=_party_process, args=(party, index, tmp), daemon=True,
                                          name=f"{prefix}{party.role.replace(' ', '-')}")
                process.start()
                processes.append(process)
            wait(parties, processes, timeout_s, result_dir)
            results = []
            for index, party in enumerate(parties):
                with open(result_dir / f"party{index}.pkl", "rb") as handle:
                    result = pickle.load(handle)  # written by our own child process just now
                if party.output_log:
                    result = {"result": result, "log": (result_dir / f"party{index}.log").read_text(errors="replace")}
                results.append(result)
            return results
        finally:
            stop(processes)
