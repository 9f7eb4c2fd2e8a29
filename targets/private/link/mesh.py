"""Explicit TCP links between the ranks of a private run: typed frames, optional mutual TLS, per-channel queues.

    mesh = Mesh.join(MeshPlan(rank=1, ranks=(0, 1, 2), roles=ROLES, addresses={0: ("127.0.0.1", 29500)},
                              listen=("127.0.0.1", 0)))
    mesh.send(0, "main", {"kind": "tensor"}, [array])
    header, arrays = mesh.receive(0, "main")

Why our own links: an engine whose transport connects to raw addresses advertised at run time (gloo)
cannot be put behind a relay (the emulated link) or behind TLS. Here every address is explicit: rank 0
listens at the run's address; every other rank connects to it, says who it is in a typed hello and
gets back the addresses of the other listening ranks (each rank listens for the ranks above it: the
client for the dealer). A launcher on one machine passes every address up front, so it can point
them at the relay instead of at the parties.

Each pair of ranks has two connections, one per direction, so that no TLS socket is ever read and
written by two threads at once (``Mesh.send`` says who writes when). Messages are
``private.wire`` messages (never pickles); each names its channel (a CrypTen group, the board), and
arrives in its channel's queue, in order per pair and channel.

With TLS (``plan.tls``, a folder of certificates: ``tls.TlsRoles``) each connection is authenticated
both ways before anything else is sent: the connecting side checks that the listener's certificate
names the role of the rank it dialled; the listener requires a client certificate from the same CA and checks, after reading the hello (a rank
number and an address, nothing derived from the prompt or the weights), that it names the role of the
rank the peer claims. A refusal is one AeroError line naming the peer and the reason.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from aero_compile.errors import AeroError
from aero_compile.targets.private.party_watch import CLOCK
from aero_compile.targets.private.wire import WireError, decode, encode

from .frames import read_frame, write_frame
from .tls import TlsRoles

HELLO_LIMIT = 1 << 12  # a hello or an address table: a few hundred bytes
CONNECT_POLL_S = 0.1
BUFFER_BYTES = 4 << 20
# Messages up to this size are written by the calling thread itself, larger ones by the link's sender thread.
# Measured on this 2-core machine under load (gpt2-tiny, T=8): a loopback write wakes the reader, and the
# writer then often waits for a core (2.5 ms per write on average); with every write on the sender thread
# the caller computes on meanwhile, and communication took 0.65 s of the forward pass instead of 2.4 s.
# So 0: everything goes through the sender thread, as gloo does.
INLINE_BYTES = 0


class PeerLost(AeroError):
    """A peer closed its link or sent something we refuse, while this party waited for it."""


@dataclass(frozen=True)
class MeshPlan:
    """Who this rank is and where its peers are (``addresses``: rank -> (host, port) to dial)."""

    rank: int
    ranks: tuple[int, ...]
    roles: dict[int, str]  # rank -> role ("owner", "client", "dealer"): the certificate's name
    names: dict[int, str]  # rank -> how errors name it: "the client (rank 1)"
    addresses: dict[int, tuple[str, int]]
    listen: tuple[str, int] | None = None  # where this rank accepts the ranks above it
    advertise: tuple[str, int] | None = None  # the address the ranks above dial (default: derived)
    timeout_s: float = 120.0
    tls: str | None = None  # the certificates' folder (``tls.TlsRoles``): mutual TLS on every connection

    def listens(self) -> bool:
        return any(other > self.rank for other in self.ranks)


class _Link:
    """The two connections to one peer; large sends go through a sender thread (see ``Mesh.send``)."""

    def __init__(self):
        self.outgoing: socket.socket | None = None
        self.incoming: socket.socket | None = None
        self.send_lock = threading.Lock()  # one writer at a time on the outgoing connection
        self.read_lock = threading.Lock()  # one reader at a time on the incoming connection
        self.pending = 0  # sends handed to the sender thread and not yet written
        self.pending_data = 0  # of which protocol messages (not signs of life): what close() waits for
        self.pending_lock = threading.Lock()
        self.outbox: queue.SimpleQueue | None = None
        self.send_error: BaseException | None = None


class Mesh:
    """The connections of one rank to every other rank of the run."""

    def __init__(self, plan: MeshPlan):
        self.plan = plan
        self.tls = TlsRoles.load(plan.tls, plan.roles[plan.rank]) if plan.tls else None
        self.links: dict[int, _Link] = {peer: _Link() for peer in plan.ranks if peer != plan.rank}
        self._queues: dict[tuple[int, str], queue.SimpleQueue] = {}
        self._queues_lock = threading.Lock()
        self.lost: dict[int, str] = {}
        self.board: dict[int, tuple[float, dict]] = {}  # peer -> (local receive time, last "board" header)
        self.closed = False

    # ---- joining ---------------------------------------------------------------------------------
    @classmethod
    def join(cls, plan: MeshPlan) -> "Mesh":
        """Connect to every peer (rank 0 first), authenticated where ``plan.tls``; AeroError on failure."""
        mesh = cls(plan)
        deadline = time.monotonic() + plan.timeout_s
        listener = _listen(plan.listen) if plan.listens() else None
        try:
            with CLOCK.waiting():
                addresses = dict(plan.addresses)
                if plan.rank == 0:
                    addresses.update(mesh._accept_all(listener, deadline, table=True))
                else:
                    addresses.update(mesh._dial(0, addresses, deadline, listener))
                    for peer in sorted(p for p in plan.ranks if 0 < p < plan.rank):
                        mesh._dial(peer, addresses, deadline, None)
                    if listener is not None:
                        mesh._accept_all(listener, deadline, table=False)
        except BaseException:
            mesh.close()
            raise
        finally:
            if listener is not None:
                listener.close()
        return mesh

    def _hello(self, listener: socket.socket | None, sock: socket.socket) -> dict:
        advertise = self.plan.advertise
        if advertise is None and listener is not None:  # the address our peer reached us by, our port
            advertise = (sock.getsockname()[0], listener.getsockname()[1])
        return {"kind": "hello", "rank": self.plan.rank, "advertise": list(advertise) if advertise else None}

    def _dial(self, peer: int, addresses: dict, deadline: float, listener) -> dict:
        """Open both connections to ``peer`` (a lower rank); from rank 0, the table of listening ranks."""
        if peer not in addresses:
            raise AeroError(f"internal: no address for {self.plan.names[peer]}")
        table: dict = {}
        for direction in ("to", "from"):  # "to": we write; "from": the peer writes
            sock = self._connect(peer, addresses[peer], deadline)
            hello = self._hello(listener, sock) | {"direction": direction}
            try:
                write_frame(sock, encode(hello))
            except OSError as exc:  # ssl.SSLError included: the listener refused our certificate at once
                raise self._refusal(peer, exc) from None
            self._expect(sock, peer, "welcome", deadline)  # admitted (or refused: one line, not a timeout)
            if direction == "to":
                self.links[peer].outgoing = sock
            else:
                self.links[peer].incoming = sock
                if peer == 0:
                    header = self._expect(sock, peer, "table", deadline)
                    table = {int(r): tuple(a) for r, a in header.get("addresses", {}).items()}
        return table

    def _expect(self, sock: socket.socket, peer: int, kind: str, deadline: float) -> dict:
        """The listener's next rendezvous message, of ``kind``; AeroError saying why if it refused us instead."""
        name, own = self.plan.names[peer], self.plan.names[self.plan.rank]
        sock.settimeout(max(1.0, deadline - time.monotonic()))
        try:
            header, _ = decode(read_frame(sock, name, HELLO_LIMIT), peer=name)
        except (WireError, OSError) as exc:
            raise self._refusal(peer, exc) from None
        finally:
            sock.settimeout(None)
        if header.get("kind") != kind:
            raise AeroError(f"{name} answered {own} with {header.get('kind')!r}, not {kind!r}: "
                            "not an aero-compile party")
        return header

    def _refusal(self, peer: int, exc: BaseException) -> AeroError:
        name, own = self.plan.names[peer], self.plan.names[self.plan.rank]
        if isinstance(exc, ssl.SSLError):
            return AeroError(f"{name} refused {own}: it did not accept its certificate "
                             f"({getattr(exc, 'reason', None) or exc})")
        return AeroError(f"{name} refused {own}: it closed the connection after the hello ({exc})")

    def _connect(self, peer: int, address: tuple[str, int], deadline: float) -> socket.socket:
        name, last = self.plan.names[peer], None
        while time.monotonic() < deadline:
            try:
                sock = socket.create_connection(address, timeout=max(1.0, deadline - time.monotonic()))
            except OSError as exc:  # not listening yet
                last = exc
                time.sleep(CONNECT_POLL_S)
                continue
            _tune(sock)
            if self.tls is not None:
                sock = self.tls.client_side(sock, peer_role=self.plan.roles[peer], peer_name=name,
                                                 own_name=self.plan.names[self.plan.rank])
            sock.settimeout(None)
            return sock
        raise AeroError(f"{self.plan.names[self.plan.rank]} could not reach {name} at "
                        f"{address[0]}:{address[1]} within {self.plan.timeout_s:g} s ({last})")

    def _accept_all(self, listener: socket.socket, deadline: float, table: bool) -> dict:
        """Accept both connections of every higher rank; rank 0 sends each the listening ranks' table."""
        expected = {(peer, d) for peer in self.plan.ranks if peer > self.plan.rank for d in ("to", "from")}
        advertised: dict[int, tuple[str, int]] = {}
        waiting_from: list[socket.socket] = []
        while expected:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted({self.plan.names[p] for p, _ in expected})
                raise AeroError(f"{self.plan.names[self.plan.rank]} waited {self.plan.timeout_s:g} s for "
                                f"{' and '.join(missing)} to connect at {_where(listener)}: start them, or check "
                                "the address")
            listener.settimeout(min(left, 1.0))
            try:
                sock, address = listener.accept()
            except socket.timeout:
                continue
            sock.settimeout(max(1.0, left))
            _tune(sock)
            hello, sock = self._admit(sock, address, expected)
            if hello is None:
                continue
            peer, direction = hello["rank"], hello["direction"]
            expected.discard((peer, direction))
            if hello.get("advertise"):
                advertised[peer] = tuple(hello["advertise"])
            sock.settimeout(None)
            if direction == "to":  # the peer writes: we read
                self.links[peer].incoming = sock
            else:
                self.links[peer].outgoing = sock
                waiting_from.append(sock)
        if table:
            listed = {str(r): list(a) for r, a in {**advertised, **self.plan.addresses}.items() if r != 0}
            for sock in waiting_from:
                write_frame(sock, encode({"kind": "table", "addresses": listed}))
        return advertised

    def _admit(self, sock: socket.socket, address, expected) -> tuple[dict | None, socket.socket]:
        """The peer's hello, checked (and its certificate against the rank it claims), or a one-line refusal."""
        where = f"{address[0]}:{address[1]}"
        if self.tls is not None:
            try:
                sock = self.tls.server_side(sock, where=where, own_name=self.plan.names[self.plan.rank])
            except AeroError:
                sock.close()
                raise
        try:
            header, _ = decode(read_frame(sock, f"a peer at {where}", HELLO_LIMIT), peer=f"a peer at {where}")
        except (WireError, OSError) as exc:
            sock.close()
            raise AeroError(f"{self.plan.names[self.plan.rank]} refused a peer at {where}: {exc}") from None
        rank, direction = header.get("rank"), header.get("direction")
        if header.get("kind") != "hello" or (rank, direction) not in expected:
            sock.close()
            raise AeroError(f"{self.plan.names[self.plan.rank]} refused a peer at {where}: it claims rank "
                            f"{rank!r} ({direction!r}), not a rank this run still waits for")
        if self.tls is not None:
            self.tls.check_role(sock, claimed_role=self.plan.roles[rank],
                                peer_name=f"{self.plan.names[rank]} at {where}", own_name=self.plan.names[self.plan.rank])
        write_frame(sock, encode({"kind": "welcome"}))
        return header, sock

    # ---- traffic ---------------------------------------------------------------------------------
    # Writes go through the link's sender thread (``INLINE_BYTES``): the caller computes on meanwhile, and
    # two parties sending large messages to each other at once (an all_reduce) never both block in a full
    # socket buffer before either reads. The calling thread reads what it waits for itself: no hand-off
    # (and wake-up) on the receiving side.
    def send(self, peer: int, channel: str, header: dict | None = None, arrays=(), *, droppable: bool = False) -> None:
        """Send a message to ``peer`` on ``channel``; a ``droppable`` one (a sign of life) is dropped, not queued,
        while earlier messages to that peer are still unsent (a peer that never reads must not pile them up)."""
        payload = encode({**(header or {}), "c": channel}, arrays)
        link = self.links[peer]
        if link.send_error is not None:
            raise self._lost_while_sending(peer, link.send_error)
        with link.pending_lock:
            if droppable and link.pending:
                return
            inline = link.pending == 0 and len(payload) <= INLINE_BYTES
            if not inline:
                link.pending += 1
                link.pending_data += 0 if droppable else 1
        if not inline:
            if link.outbox is None:
                link.outbox = queue.SimpleQueue()
                threading.Thread(target=self._send_later, args=(peer, link), daemon=True,
                                 name=f"aero-link-to-{peer}").start()
            link.outbox.put((payload, droppable))
            return
        with link.send_lock:
            try:
                write_frame(link.outgoing, payload)
            except OSError as exc:
                raise self._lost_while_sending(peer, exc) from None

    def _send_later(self, peer: int, link: _Link) -> None:
        while True:
            payload, droppable = link.outbox.get()
            try:
                with link.send_lock:
                    write_frame(link.outgoing, payload)
            except OSError as exc:
                link.send_error = exc
            with link.pending_lock:
                link.pending -= 1
                link.pending_data -= 0 if droppable else 1

    def _lost_while_sending(self, peer: int, exc: BaseException) -> PeerLost:
        return PeerLost(f"{self.plan.names[self.plan.rank]} lost its link to {self.plan.names[peer]} "
                        f"while sending ({exc})")

    def receive(self, peer: int, channel: str) -> tuple[dict, list]:
        """The next message from ``peer`` on ``channel`` (waiting counts as waiting for the peers)."""
        waiting = self._queue(peer, channel)
        link = self.links[peer]
        with CLOCK.waiting():
            while True:
                try:
                    return waiting.get_nowait()
                except queue.Empty:
                    pass
                with link.read_lock:
                    if not waiting.empty():  # another thread read it for us meanwhile
                        continue
                    got_channel, message = self._read_one(peer, link.incoming)
                if got_channel == channel:
                    return message
                if got_channel is not None:
                    self._queue(peer, got_channel).put(message)

    def _queue(self, peer: int, channel: str) -> queue.SimpleQueue:
        with self._queues_lock:
            return self._queues.setdefault((peer, channel), queue.SimpleQueue())

    def _read_one(self, peer: int, sock: socket.socket) -> tuple[str | None, tuple[dict, list]]:
        """One message from ``peer``: (its channel, (header, arrays)); the board's is kept, not returned."""
        name = self.plan.names[peer]
        if peer in self.lost:
            raise PeerLost(self.lost[peer])
        try:
            header, arrays = decode(read_frame(sock, name), peer=name)
        except (WireError, OSError) as exc:
            closed = isinstance(exc, OSError) or "closed the connection" in str(exc)
            reason = "it closed its link (stopped or crashed)" if closed else str(exc)
            self.lost[peer] = f"{self.plan.names[self.plan.rank]} lost {name}: {reason}"
            raise PeerLost(self.lost[peer]) from None
        channel = header.pop("c", None)
        if channel == "board":
            self.board[peer] = (time.time(), header)
            return None, (header, arrays)
        if not isinstance(channel, str):
            raise WireError(f"{name} sent a message without a channel: refused")
        return channel, (header, arrays)

    def close(self, flush_s: float = 30.0) -> None:
        """Close every connection, after the sender threads have written what they hold (at most ``flush_s``)."""
        deadline = time.monotonic() + flush_s
        for link in self.links.values():
            while link.pending_data and link.send_error is None and time.monotonic() < deadline:
                time.sleep(0.001)
        self.closed = True
        for link in self.links.values():
            for sock in (link.outgoing, link.incoming):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass


def _listen(address: tuple[str, int] | None) -> socket.socket:
    host, port = address or ("127.0.0.1", 0)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise AeroError(f"cannot listen at {host}:{port} ({exc.strerror}): give a free port or another address"
                        ) from None
    listener.listen(16)
    return listener


def _where(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"{host}:{port}"


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
