"""Signs of life of CrypTen parties started one by one (multi-host): over their own links (``MeshBoard``,
what multi-host runs use), or in torch.distributed's rendezvous store (``StoreBoard``, gloo).

The watch itself is engine-agnostic (``private.party_watch.SelfWatch``); the board it reads is not:
CrypTen's parties meet through torch.distributed, whose key-value store (a FileStore or the TCPStore
served by rank 0) every party can read and write, so the board lives there. (SPU's brpc link has no
such store; an SPU party bounds its waiting with brpc's own connect retries and receive timeout.)
Each party publishes, twice a second, that it is alive and since when it waits; a peer whose entry
stops changing is gone, and the party that hosts a tcp:// rendezvous is gone when the store is.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse


class StoreBoard:
    """Each party's sign of life in the rendezvous store: ``aero-party/RANK`` = "wall-time waiting-since".

    ``host``: (address, port) of a tcp:// store's server, probed with a plain connection before each
    use: a store call to a server that is gone makes c10d print C++ stack frames, which we never want.
    """

    def __init__(self, store, rank: int, host: tuple[str, int] | None = None):
        self.store, self.rank, self.host = store, rank, host
        self.host_rank = 0 if host else None  # a tcp:// store is served by rank 0: gone with it
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
    url = urlparse(rendezvous)
    return (url.hostname, url.port) if url.scheme == "tcp" and url.hostname and url.port else None


def store_board_connector(rank: int, rendezvous: str):
    """For ``SelfWatch``: the board, once torch.distributed's default group (and so its store) exists."""
    host = store_host(rendezvous)

    def connect() -> StoreBoard | None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            from torch.distributed.distributed_c10d import _get_default_store

            return StoreBoard(_get_default_store(), rank, host)
        return None

    return connect


class MeshBoard:
    """Signs of life over the parties' own links (``private.link.mesh``): each party sends its peers a small
    ``board`` message twice a second; a peer's entry is when its last one arrived here (our clock, so host
    clocks need not agree). A party reads a peer's messages while it waits for that peer, which is when
    the watch asks. The links have no host whose loss takes the board down (``host_rank`` None); a peer
    that dies closes its links, and the call waiting for it fails at once, naming it."""

    host_rank = None

    def __init__(self, mesh, rank: int):
        self.mesh, self.rank = mesh, rank

    def reachable(self) -> bool:
        return True

    def publish(self, waiting_since_wall: float) -> None:
        for peer in self.mesh.links:
            try:
                self.mesh.send(peer, "board", {"since": waiting_since_wall}, droppable=True)
            except Exception:  # the peer is gone: its own entry goes stale, which is the sign
                pass

    def read(self, rank: int) -> tuple[float, float] | None:
        entry = self.mesh.board.get(rank)
        if entry is None:
            return None
        seen, header = entry
        since = header.get("since", 0.0)
        return seen, float(since) if isinstance(since, (int, float)) else 0.0


def mesh_board_connector(rank: int):
    """For ``SelfWatch``: the board, once this party's links are up (``communicator.LinkCommunicator``)."""

    def connect() -> MeshBoard | None:
        from .communicator import LinkCommunicator

        instance = LinkCommunicator.instance
        return MeshBoard(instance.mesh, rank) if instance is not None else None

    return connect
