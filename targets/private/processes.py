"""Run the parties of a private run as processes on this machine; one-line errors naming the party.

    results = launch_parties([Party("model owner", owner_main, (graphs,)),
                              Party("client", client_main, (graphs, input_ids))], timeout_s=120)

Party ``i`` is rank ``i``. Each runs its function in its own process and returns a picklable result.
``timeout_s`` bounds *waiting*, not work (``party_watch``): the run ends once every live party has
waited for its peers longer than that (an engine marks its blocking calls with ``CLOCK.waiting()``;
a party that never marks one is never "stuck"); ``deadline_s``, if given, bounds the whole run.
A party that raises or dies ends the run with one AeroError line naming it by role and rank with the
real time since the start, root cause first (a party that died without a word, then the others'
errors); every process started here is gone when ``launch_parties`` returns. An engine's party
function opens its own links (gloo, brpc, ...); this module knows nothing of them.

Start methods: ``forkserver`` (the default) forks each party from a clean server process started once
(with ``preload`` imported there, so a party does not pay for importing torch again); ``spawn``
starts a fresh interpreter per party; both need picklable arguments. ``fork`` lets the children
inherit arguments that do not pickle, but is refused once jax is loaded here: its thread pools do not
survive a fork (a child can deadlock), and a test process may have run SPU before.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from aero_compile.errors import AeroError, describe

from .party_watch import CLOCK, describe_party

GRACE_S = 5.0  # how long survivors get to fail on their own (with their message) after a party died
POLL_S = 0.05
START_METHODS = ("forkserver", "spawn", "fork")
FORK_UNSAFE = ("jax",)  # loaded here, these make a forked child deadlock-prone


@dataclass
class Party:
    """One party: its role (named in errors), the function it runs and that function's arguments."""

    role: str
    main: Callable  # module-level (it pickles by name) unless started with fork
    args: tuple = ()
    output_log: bool = False  # send the process's fd 1 and 2 (native libraries' logs) to a file, returned


def _thread_lock_for_progress_bars() -> None:
    """torch.fx's Interpreter opens a (disabled) tqdm bar, and tqdm's class lock is then a multiprocessing
    RLock: a named semaphore that a party's ``os._exit`` never unlinks, so Python's resource tracker warned
    about "leaked semaphore objects" at the end of every private run. A party draws no bar shared across
    processes: a thread lock is enough, and leaves nothing behind."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    import threading

    tqdm.set_lock(threading.RLock())


def _party_process(party: Party, rank: int, clock_slots, result_dir: str) -> None:
    CLOCK.attach(clock_slots, rank)
    _thread_lock_for_progress_bars()
    out = Path(result_dir) / f"party{rank}"
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


def failure(result_dir: Path, roles: dict[int, str], processes, died_at: dict[int, float], start: float) -> str:
    """Root cause first: a party that died without a word (crashed, killed), then the parties' own errors."""
    crashed, failed = [], []
    for rank in sorted(died_at, key=died_at.get):
        err = result_dir / f"party{rank}.err"
        when = f"after {math.floor(10 * (died_at[rank] - start)) / 10:.1f} s"  # floored: never past the real time
        if err.exists():
            failed.append(f"{describe_party(rank, roles)} failed {when}: {err.read_text().splitlines()[0][:200]}")
        else:
            crashed.append(f"{describe_party(rank, roles)} died {when} (exit code {processes[rank].exitcode})")
    return "; then ".join(crashed + failed)


def _stuck(waiting: dict[int, float], roles, processes, now: float, start: float, timeout_s: float) -> str:
    who = ", ".join(f"{describe_party(rank, roles)} for {now - since:.1f} s" for rank, since in waiting.items())
    finished = [describe_party(rank, roles) for rank, p in enumerate(processes) if p.exitcode == 0]
    done = f" ({', '.join(finished)} had finished)" if finished else ""
    return (f"private run stuck after {now - start:.1f} s: every running party was waiting for its peers and none "
            f"was working: {who}{done}; --party-timeout is {timeout_s:g} s of waiting")


def watch(roles: dict[int, str], processes, clock_slots, timeout_s: float, deadline_s: float | None,
          result_dir: Path, start: float) -> None:
    """Return when every party exited 0; AeroError naming the failed, stuck or overdue party otherwise."""
    died_at: dict[int, float] = {}
    while True:
        now = time.monotonic()
        for rank, process in enumerate(processes):
            if process.exitcode not in (0, None) and rank not in died_at:
                died_at[rank] = now
        alive = [rank for rank, process in enumerate(processes) if process.is_alive()]
        if not alive or (died_at and now - min(died_at.values()) > GRACE_S):
            break
        waiting = {rank: clock_slots[rank] for rank in alive}
        if not died_at and all(since and now - since > timeout_s for since in waiting.values()):
            raise AeroError(_stuck(waiting, roles, processes, now, start, timeout_s))
        if not died_at and deadline_s is not None and now - start > deadline_s:
            running = " and ".join(describe_party(rank, roles) for rank in alive)
            raise AeroError(f"private run timed out after {now - start:.0f} s: {running} still running "
                            "(a party hung outside its links)")
        time.sleep(POLL_S)
    if died_at:
        raise AeroError(f"private run failed: {failure(result_dir, roles, processes, died_at, start)}")


def check_start_method(start_method: str) -> None:
    if start_method not in START_METHODS:
        raise AeroError(f"internal: unknown start method '{start_method}': use one of {', '.join(START_METHODS)}")
    loaded = [name for name in FORK_UNSAFE if name in sys.modules]
    if start_method == "fork" and loaded:
        raise AeroError(f"internal: cannot fork the parties: {', '.join(loaded)} is loaded in this process and its "
                        "threads do not survive a fork (a party could deadlock); start them with forkserver or spawn")


def launch_parties(parties: list[Party], *, timeout_s: float, deadline_s: float | None = None,
                   prefix: str = "aero-private-", start_method: str = "forkserver",
                   preload: tuple[str, ...] = ()) -> list:
    """Start the parties, watch them, return their results in order (with ``"log"``, the process's native
    output, where the party asked for it); AeroError on failure. ``preload``: modules the forkserver
    imports once (it is started on the first call; later calls reuse it and its preloads)."""
    check_start_method(start_method)
    if start_method == "forkserver" and preload:
        multiprocessing.set_forkserver_preload(list(preload))  # effective when the server first starts
    context = multiprocessing.get_context(start_method)
    roles = {rank: party.role for rank, party in enumerate(parties)}
    clock_slots = context.RawArray("d", len(parties))  # shared memory, written by each party's CLOCK
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        result_dir = Path(tmp)
        processes = []
        start = time.monotonic()
        try:
            for rank, party in enumerate(parties):
                process = context.Process(target=_party_process, args=(party, rank, clock_slots, tmp), daemon=True,
                                          name=f"{prefix}{party.role.replace(' ', '-')}")
                process.start()
                processes.append(process)
            watch(roles, processes, clock_slots, timeout_s, deadline_s, result_dir, start)
            results = []
            for rank, party in enumerate(parties):
                with open(result_dir / f"party{rank}.pkl", "rb") as handle:
                    result = pickle.load(handle)  # written by our own child process just now
                if party.output_log:
                    result = {"result": result, "log": (result_dir / f"party{rank}.log").read_text(errors="replace")}
                results.append(result)
            return results
        finally:
            stop(processes)
