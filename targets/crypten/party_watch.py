"""Watch the parties of a private run: bound how long they *wait* for each other, never how long they work.

Engine-agnostic (nothing here imports an engine; it could move to a shared package of private
engines): an engine marks the moments a party blocks on its peers with ``waiting()`` (CrypTen: every
torch.distributed call, see ``compat.set_party_timeout``), and a party that is computing is never
timed out, however long it takes.

* Parties on this machine: ``launch_and_watch(body, roles, timeout_s)`` forks one process per rank
  running ``body(rank)``. It fails, with one line, when a party dies (naming it by rank and role, with
  the real time since the start, root cause first) or when every live party has been waiting longer
  than ``timeout_s`` (nobody is working, so nobody will ever answer).
* A party started alone (multi-host): ``SelfWatch`` ends the process with one line once it has waited
  ``timeout_s`` while no peer is working: before connecting (no peer ever showed up) or in silence.
  Peers see each other through a small board kept in the rendezvous store (``StoreBoard``): each party
  publishes, twice a second, that it is alive and since when it waits; a peer whose entry stops
  changing is gone, and the party that hosts a tcp:// rendezvous is gone when the store is.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from aero_compile.errors import AeroError

GRACE_S = 5.0  # how long survivors get to fail on their own (with their message) after a party died
POLL_S = 0.05
HEARTBEAT_S = 0.5
GONE_AFTER_S = 3.0  # a peer silent on the board this long is gone


def describe_party(rank: int, roles: dict[int, str]) -> str:
    """``client (rank 1)``."""
    return f"{roles.get(rank, 'party')} (rank {rank})"


class WaitClock:
    """When this process began waiting for its peers (0.0: it is working), readable by a parent it forked.

    One slot per rank, in shared memory created before the fork; time is ``time.monotonic()``
    (CLOCK_MONOTONIC: the same clock in every process of the machine).
    """

    def __init__(self, ranks: int):
        self._since = multiprocessing.get_context("fork").Array("d", ranks, lock=False)
        self._rank, self._depth = None, 0

    def bind(self, rank: int) -> None:
        """In the party process: the slot this process writes."""
        self._rank = rank

    @contextmanager
    def waiting(self):
        """Around a call that blocks on the peers (nested calls count once)."""
        if self._rank is None:
            yield
            return
        self._depth += 1
        if self._depth == 1:
            self._since[self._rank] = time.monotonic()
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._since[self._rank] = 0.0

    def waiting_since(self, rank: int | None = None) -> float:
        return self._since[self._rank if rank is None else rank]

    def reset(self, rank: int) -> None:
        self._since[rank] = 0.0


# The clock of this process: engines mark their blocking calls with ``CLOCK.waiting()``.
CLOCK = WaitClock(8)


def launch_and_watch(body: Callable[[int], None], roles: dict[int, str], timeout_s: float,
                     result_dir: Path) -> None:
    """Run ``body(rank)`` in one forked process per rank of ``roles``; return when all exit 0.

    ``body`` reports its own failure by writing ``result_dir/rank{N}.err`` (first line: what went
    wrong) and exiting non-zero; a process that dies without one crashed. AeroError (one line) on
    failure; every process started here is gone when this returns.
    """
    context = multiprocessing.get_context("fork")  # the children inherit the graphs (they do not pickle)
    start = time.monotonic()
    for rank in roles:
        CLOCK.reset(rank)  # a slot may still hold the wait of an earlier run's party that was stopped
    processes: dict[int, multiprocessing.Process] = {}
    try:
        for rank in roles:
            processes[rank] = context.Process(target=_party_main, args=(body, rank), daemon=True,
                                              name=f"aero-party-rank{rank}")
            processes[rank].start()
        _watch(processes, roles, timeout_s, result_dir, start)
    finally:
        _stop(list(processes.values()))


def _party_main(body, rank: int) -> None:
    CLOCK.bind(rank)
    body(rank)


def _watch(processes, roles, timeout_s: float, result_dir: Path, start: float) -> None:
    died_at: dict[int, float] = {}
    while True:
        now = time.monotonic()
        for rank, process in processes.items():
            if process.exitcode not in (0, None) and rank not in died_at:
                died_at[rank] = now
        alive = [rank for rank, process in processes.items() if process.is_alive()]
        if not alive:
            break
        if died_at and now - min(died_at.values()) > GRACE_S:
            break
        waiting = {rank: CLOCK.waiting_since(rank) for rank in alive}
        if not died_at and all(since and now - since > timeout_s for since in waiting.values()):
            raise AeroError(_stuck(waiting, processes, roles, now, start, timeout_s))
        time.sleep(POLL_S)
    if not died_at:
        return
    raise AeroError(f"private run failed: {_failure(processes, roles, died_at, result_dir, start)}")


def _stuck(waiting, processes, roles, now: float, start: float, timeout_s: float) -> str:
    who = ", ".join(f"{describe_party(rank, roles)} for {now - since:.1f} s" for rank, since in waiting.items())
    finished = [describe_party(rank, roles) for rank, p in processes.items() if p.exitcode == 0]
    done = f" ({', '.join(finished)} had finished)" if finished else ""
    return (f"private run stuck after {now - start:.1f} s: every running party was waiting for its peers and none "
            f"was working: {who}{done}; --party-timeout is {timeout_s:g} s of waiting")


def _failure(processes, roles, died_at: dict[int, float], result_dir: Path, start: float) -> str:
    """Root cause first: a party that died without a word (crashed, killed), then the parties' own errors."""
    crashed, failed = [], []
    for rank in sorted(died_at, key=died_at.get):
        err = result_dir / f"rank{rank}.err"
        when = f"after {died_at[rank] - start:.1f} s"
        if err.exists():
            failed.append(f"{describe_party(rank, roles)} failed {when}: {err.read_text().splitlines()[0][:200]}")
        else:
            crashed.append(f"{describe_party(rank, roles)} died {when} (exit code {processes[rank].exitcode})")
    return "; then ".join(crashed + failed)


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


# -- parties started one by one (multi-host) ------------------------------------------------------------

class StoreBoard:
    """Each party's sign of life in the rendezvous store: ``aero-party/RANK`` = "wall-time waiting-since".

    ``host``: (address, port) of a tcp:// store's server, probed with a plain connection before each
    use: a store call to a server that is gone makes c10d print C++ stack frames, which we never want.
    """

    def __init__(self, store, rank: int, host: tuple[str, int] | None = None):
        self.store, self.rank, self.host = store, rank, host
        self.lost_at: float | None = None  # when the store stopped answering (its host is gone)

    def reachable(self) -> bool:
        if self.lost_at is None and self.host is not None:
            try:
                socket.create_connection(self.host, timeout=1.0).close()
            except OSError:
                self.lost_at = time.time()
        return self.lost_at is None

    def publish(self, waiting_since_wall: float) -> None:
        if not self.reachable():
            return
        try:
            self.store.set(f"aero-party/{self.rank}", f"{time.time()} {waiting_since_wall}")
        except Exception:  # the store's host is gone
            self.lost_at = self.lost_at or time.time()

    def read(self, rank: int) -> tuple[float, float] | None:
        """(last seen, waiting since; 0 while working) of a peer, or None if it never published."""
        key = f"aero-party/{rank}"
        if not self.reachable():
            return None
        try:
            if not self.store.check([key]):
                return None
            seen, since = self.store.get(key).decode().split()
        except Exception:
            self.lost_at = self.lost_at or time.time()
            return None
        return float(seen), float(since)


def store_host(rendezvous: str) -> tuple[str, int] | None:
    """(host, port) of a tcp:// rendezvous, whose store the party of rank 0 serves; None otherwise."""
    from urllib.parse import urlparse

    url = urlparse(rendezvous)
    return (url.hostname, url.port) if url.scheme == "tcp" and url.hostname and url.port else None


class SelfWatch:
    """This party's watchdog: one line and exit once it has waited ``timeout_s`` with no peer working."""

    def __init__(self, rank: int, roles: dict[int, str], timeout_s: float, where: str):
        self.rank, self.roles, self.timeout_s, self.where = rank, roles, timeout_s, where
        self.host = store_host(where)  # a tcp:// store is served by rank 0: gone with it
        self.host_rank = 0 if self.host else None
        self.start = time.time()
        self.board: StoreBoard | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aero-party-watch", daemon=True)

    def __enter__(self):
        CLOCK.bind(self.rank)
        CLOCK.reset(self.rank)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def _connect(self) -> None:
        # Once the process group exists (torch.distributed's default group), peers meet on its store.
        import torch.distributed as dist

        if self.board is None and dist.is_available() and dist.is_initialized():
            from torch.distributed.distributed_c10d import _get_default_store

            self.board = StoreBoard(_get_default_store(), self.rank, self.host)

    def _waiting_since(self) -> float:
        since = CLOCK.waiting_since(self.rank)
        return 0.0 if not since else time.time() - (time.monotonic() - since)

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._connect()
            since = self._waiting_since()
            if self.board is not None:
                self.board.publish(since)
            if since and time.time() - since > self.timeout_s and not self._a_peer_is_working():
                self._give_up(since)

    def _a_peer_is_working(self) -> bool:
        if self.board is None:
            return False
        now = time.time()
        for rank in self.roles:
            state = None if rank == self.rank else self.board.read(rank)
            if state and now - state[0] < GONE_AFTER_S and (not state[1] or now - state[1] < self.timeout_s):
                return True
        return False

    def peers_gone(self) -> list[str]:
        """The peers with no sign of life, named (after a failed call: who is to blame)."""
        if self.board is None:
            return []
        if not self.board.reachable() and self.host_rank is not None and self.host_rank != self.rank:
            return [f"{describe_party(self.host_rank, self.roles)}, host of the rendezvous, is gone"]
        now, gone = time.time(), []
        for rank in self.roles:
            if rank == self.rank:
                continue
            state = self.board.read(rank)
            if state is None:
                gone.append(f"{describe_party(rank, self.roles)} never joined")
            elif now - state[0] > GONE_AFTER_S:
                gone.append(f"{describe_party(rank, self.roles)} is gone (last sign of life {now - state[0]:.1f} s ago)")
        return gone

    def blame_after_failure(self) -> str:
        """Wait until a dead peer's silence shows on the board (at most GONE_AFTER_S), then name it."""
        deadline = time.time() + GONE_AFTER_S + 2 * HEARTBEAT_S
        while time.time() < deadline:
            gone = self.peers_gone()
            if gone:
                return "; ".join(gone)
            time.sleep(HEARTBEAT_S / 2)
        return "no peer is known to be gone"

    def _give_up(self, since: float) -> None:
        me = describe_party(self.rank, self.roles)
        if self.board is None:
            why = f"no peer connected at {self.where}"
        else:
            why = "; ".join(self.peers_gone()) or "every party was waiting and none was working"
        sys.stderr.write(f"aero-compile: error: {me} waited {time.time() - since:.1f} s for its peers "
                         f"(--party-timeout {self.timeout_s:g} s), {time.time() - self.start:.1f} s after it "
                         f"started: {why}\n")
        sys.stderr.flush()
        os._exit(2)  # as the CLI exits on an AeroError; now, in one line: gloo's own timeout prints C++ frames, later
