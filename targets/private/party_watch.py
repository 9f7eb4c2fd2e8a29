"""Bound how long the parties of a private run *wait* for each other, never how long they work.

An engine marks the moments a party blocks on its peers with ``CLOCK.waiting()`` (CrypTen: every
torch.distributed call, see ``crypten.compat.set_party_timeout``); a party that is computing is never
timed out, however long it takes. Two watchers read the clock:

* ``processes.launch_parties`` (parties on this machine): the clock's slots live in shared memory
  created before the parties start, one per rank; the launcher ends the run once every live party has
  been waiting longer than the timeout (nobody is working, so nobody will ever answer).
* ``SelfWatch`` (a party started alone, multi-host): a thread in the party ends the process with one
  line once it has waited ``timeout_s`` while no peer is working. Peers see each other through a
  *board* an engine provides (CrypTen: its rendezvous store, ``crypten.store_board``); without one
  the watch can only say that no peer connected.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Protocol

HEARTBEAT_S = 0.5
GONE_AFTER_S = 3.0  # a peer silent on the board this long is gone


def describe_party(rank: int, roles: dict[int, str]) -> str:
    """``client (rank 1)``."""
    return f"{roles.get(rank, 'party')} (rank {rank})"


class WaitClock:
    """When this process began waiting for its peers (0.0: it is working), in a slot its watcher reads.

    ``slots``: one float per rank, ``time.monotonic()`` (CLOCK_MONOTONIC: the same clock in every
    process of the machine); a ``multiprocessing`` RawArray handed to the party by the launcher, or a
    plain list for a watch thread in the same process. Until ``attach``, ``waiting()`` does nothing.
    """

    def __init__(self):
        self._slots, self._rank, self._depth = None, None, 0

    def attach(self, slots, rank: int) -> None:
        """In the party process: the slots and the one this process writes."""
        self._slots, self._rank, self._depth = slots, rank, 0
        slots[rank] = 0.0

    @contextmanager
    def waiting(self):
        """Around a call that blocks on the peers (nested calls count once)."""
        if self._slots is None:
            yield
            return
        self._depth += 1
        if self._depth == 1:
            self._slots[self._rank] = time.monotonic()
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._slots[self._rank] = 0.0

    def waiting_since(self) -> float:
        return self._slots[self._rank] if self._slots is not None else 0.0


# The clock of this process: engines mark their blocking calls with ``CLOCK.waiting()``.
CLOCK = WaitClock()


class Board(Protocol):
    """Where the parties of a multi-host run publish their signs of life (an engine provides it)."""

    host_rank: int | None  # the party whose loss takes the board down with it (None: no such party)

    def reachable(self) -> bool: ...

    def publish(self, waiting_since_wall: float) -> None: ...

    def read(self, rank: int) -> tuple[float, float] | None: ...  # (last seen, waiting since; 0 working)


class SelfWatch:
    """This party's watchdog: one line and exit once it has waited ``timeout_s`` with no peer working.

    ``connect_board()`` returns the board once the engine's peers can meet on it (None until then);
    ``where`` (the rendezvous or addresses) is named when no peer ever connected.
    """

    def __init__(self, rank: int, roles: dict[int, str], timeout_s: float, where: str,
                 connect_board: Callable[[], Board | None] | None = None):
        self.rank, self.roles, self.timeout_s, self.where = rank, roles, timeout_s, where
        self.connect_board = connect_board
        self.start = time.time()
        self.board: Board | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aero-party-watch", daemon=True)

    def __enter__(self):
        CLOCK.attach([0.0] * (max(self.roles) + 1), self.rank)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def _waiting_since(self) -> float:
        since = CLOCK.waiting_since()
        return 0.0 if not since else time.time() - (time.monotonic() - since)

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if self.board is None and self.connect_board is not None:
                self.board = self.connect_board()
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
        host = getattr(self.board, "host_rank", None)
        if not self.board.reachable() and host is not None and host != self.rank:
            return [f"{describe_party(host, self.roles)}, host of the rendezvous, is gone"]
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
        os._exit(2)  # as the CLI exits on an AeroError; now, in one line: an engine's own timeout may print C++ frames, later
