"""Forward TCP connections through an emulated link: bandwidth and one-way delay in each direction.

Run it as its own process (``link.process.RelayProcess`` does), so that its CPU time is its own and
can be reported beside the parties' (``os.times()`` of this process, all its threads, printed when it
stops); the parties' figures never include it, but it shares the machine's cores with them.

    relay = Relay(LinkSpec(100, 80), targets=[("127.0.0.1", 5000)])
    (port,) = relay.ports          # connect here instead of 127.0.0.1:5000
    ...
    relay.close()

The model, per route (one listening port that forwards to one target address) and direction: a serial
line at B bit/s shared by every connection of the route (connections between the same two parties
share their link). A chunk the relay reads departs when the line is free and occupies it for
len * 8 / B seconds; it is delivered, unchanged, one-way delay after its last bit has left (store and
forward of the chunk). A read takes what has reached the relay's socket, up to ``CHUNK_LINE_S`` of line
time: the parties write over loopback, many times faster than any emulated line, so a message is whole
at the relay almost at once and its last byte leaves when it would have left a real link's sender,
whatever the chunking; bigger reads only save the relay CPU, which a 2-core machine takes from the
parties. The clock starts when the bytes reached the relay's socket (the kernel's receive timestamp,
SO_TIMESTAMPNS), not when this process got round to reading them, so a busy machine delays delivery only
by the writer's wake-up (under SCHED_FIFO where allowed, ``realtime_scheduling``). The relay's own hop
(a delivery's lateness, wake-up overshoot included, plus its send: a smoothed figure the relay measures
on small messages, at most 200 us) is taken out of the delay, so that an application sees the set round trip
and not the set round trip plus two extra socket crossings. So is half the bare path's own round trip
(``bare_round_trip``: a ping-pong over plain loopback TCP when the relay starts, capped at 400 us): the
endpoints' turnaround (socket crossings, wake-ups) that any real link's round trip includes, so an
end-to-end ping reads the set RTT, not the set RTT plus the machine's own. A reader stops reading while its
line is booked more than ``HORIZON_S`` ahead: TCP then pushes back on the sender, as a full link would.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from .spec import LinkSpec

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export the constant
_TIMESPEC = struct.Struct("qq")
BUFFER_BYTES = 4 << 20  # socket buffers: a 1 Gbit/s x 40 ms link keeps 5 MB in flight
HORIZON_S = 0.02  # how far ahead a reader may book its line before it stops reading
MIN_CHUNK, MAX_CHUNK = 16 << 10, 1 << 20
CHUNK_LINE_S = 4e-3  # the most line time one read may book (see the module docstring)
RT_PRIORITY = 10
HOP_SMOOTHING, MAX_HOP_S, SMALL_BYTES = 0.1, 200e-6, 4096
CONNECT_RETRY_S = 30.0  # a party may start listening after its peer connected to the relay
BARE_PINGS, MAX_BARE_RTT_S = 64, 400e-6  # the bare path's round trip: how many pings, and the most it may take out


def wait_until(deadline: float) -> None:
    """Sleep until ``deadline`` (time.monotonic). No spinning: the wake-up's overshoot (~60-100 us) is part of
    the hop the relay measures and takes out of the delay (``SerialLine.observe_hop``). A yield-spin over the
    last 200 us of every chunk was tried: it held link-check no closer, and under real-time priority it
    took ~0.3 ms of CPU per message from the parties (on 2 cores, a LAN run's seconds grew by it)."""
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(left)


class SerialLine:
    """One direction of a link: chunks depart one after another at the line rate, then fly ``delay``."""

    def __init__(self, spec: LinkSpec, bare_one_way_s: float = 0.0):
        self.seconds_per_byte = 8.0 / spec.bits_per_second
        self.delay = spec.one_way_delay_s
        self.bare_one_way_s = bare_one_way_s  # the endpoints' own share of a one-way trip, taken out of the delay
        self.free_at = 0.0
        self.hop_s = 0.0  # the relay's own cost of a delivery (wake-up + send), taken out of the delay
        self._lock = threading.Lock()

    def delivery_time(self, nbytes: int, arrived: float) -> float:
        with self._lock:
            self.free_at = max(arrived, self.free_at) + nbytes * self.seconds_per_byte
            return self.free_at + max(0.0, self.delay - self.hop_s - self.bare_one_way_s)

    def observe_hop(self, seconds: float) -> None:
        """A delivery's lateness past its due time, send included: the hop the relay adds to a real link."""
        self.hop_s += HOP_SMOOTHING * (min(max(seconds, 0.0), MAX_HOP_S) - self.hop_s)


def bare_round_trip(pings: int = BARE_PINGS) -> float:
    """The median round trip (s) of small messages over plain loopback TCP between two threads of this process:
    what the machine itself adds to any link's round trip (two socket crossings, two wake-ups, the echo)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def echo():
        while data := server.recv(64):
            server.sendall(data)

    echoer = threading.Thread(target=echo, daemon=True)
    echoer.start()
    times = []
    try:
        for _ in range(pings + 4):
            start = time.perf_counter()
            client.sendall(b"x" * 64)
            got = 0
            while got < 64:
                data = client.recv(64 - got)
                if not data:
                    raise ConnectionError("the bare loopback echo closed early")
                got += len(data)
            times.append(time.perf_counter() - start)
    finally:
        client.close()
        echoer.join(timeout=1.0)
        server.close()
    times = sorted(times[4:])  # the first pings pay for the threads' first wake-ups
    return times[len(times) // 2]


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)


def _receive(sock: socket.socket, limit: int) -> tuple[bytes, float]:
    """(bytes, when they reached the socket on time.monotonic's clock); b"" at end of stream."""
    data, ancillary, _, _ = sock.recvmsg(limit, socket.CMSG_SPACE(_TIMESPEC.size))
    now = time.monotonic()
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(payload)
            arrived = now - (time.time() - (seconds + nanoseconds * 1e-9))
            return data, min(arrived, now)
    return data, now


class Pump:
    """One direction of one connection: a reader that books the line, a writer that delivers on time."""

    def __init__(self, source: socket.socket, sink: socket.socket, line: SerialLine, chunk: int, tap: Path | None,
                 done: threading.Semaphore):
        self.source, self.sink, self.line, self.chunk, self.tap, self.done = source, sink, line, chunk, tap, done
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=self._write, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _read(self) -> None:
        tap = open(self.tap, "ab") if self.tap else None
        try:
            while True:
                backlog = self.line.free_at - time.monotonic()
                if backlog > HORIZON_S:
                    time.sleep(backlog - HORIZON_S)
                data, arrived = _receive(self.source, self.chunk)
                if not data:
                    break
                if tap:
                    tap.write(data)
                self.queue.put((self.line.delivery_time(len(data), arrived), data))
        except OSError:
            pass
        finally:
            if tap:
                tap.close()
            self.queue.put((0.0, None))

    def _write(self) -> None:
        try:
            while True:
                due, data = self.queue.get()
                if data is None:
                    self.sink.shutdown(socket.SHUT_WR)  # the far end sees the close after the data, in order
                    break
                wait_until(due)
                self.sink.sendall(data)
                if len(data) < SMALL_BYTES:  # a large send measures the socket buffer, not the hop
                    self.line.observe_hop(time.monotonic() - due)
        except OSError:
            try:  # the far end is gone: stop reading from the near one too
                self.source.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        finally:
            self.done.release()


class Relay:
    """Listen on one loopback port per target; forward each connection through the emulated link."""

    def __init__(self, spec: LinkSpec, targets: list[tuple[str, int]], *, host: str = "127.0.0.1",
                 tap_dir: str | None = None, bare_rtt_s: float | None = None):
        self.spec, self.targets, self.tap_dir = spec.checked(), targets, tap_dir
        self.chunk = int(min(MAX_CHUNK, max(MIN_CHUNK, spec.bits_per_second / 8 * CHUNK_LINE_S)))
        # The bare path's round trip (measured now unless given), capped: a busy moment at start must not eat
        # the delay. Half of it is taken out of each direction's delay.
        measured = bare_round_trip() if bare_rtt_s is None else bare_rtt_s
        self.bare_rtt_s = min(max(measured, 0.0), MAX_BARE_RTT_S)
        self.lines = [(SerialLine(spec, self.bare_rtt_s / 2), SerialLine(spec, self.bare_rtt_s / 2))
                      for _ in targets]  # (towards target, back)
        self.listeners = []
        for _ in targets:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, 0))
            listener.listen(64)
            self.listeners.append(listener)
        self.ports = [listener.getsockname()[1] for listener in self.listeners]
        self._numbers = itertools.count(1)  # names the tap files of each connection
        self._closed = threading.Event()
        for index in range(len(targets)):
            threading.Thread(target=self._accept, args=(index,), daemon=True).start()

    def _accept(self, index: int) -> None:
        while not self._closed.is_set():
            try:
                near, _ = self.listeners[index].accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(index, near), daemon=True).start()

    def _connect(self, index: int) -> socket.socket | None:
        deadline = time.monotonic() + CONNECT_RETRY_S
        while not self._closed.is_set():
            try:
                return socket.create_connection(self.targets[index], timeout=5.0)
            except OSError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.05)
        return None

    def _forward(self, index: int, near: socket.socket) -> None:
        far = self._connect(index)
        if far is None:
            near.close()
            return
        far.settimeout(None)
        number = next(self._numbers)
        for sock in (near, far):
            _tune(sock)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        towards, back = self.lines[index]
        done = threading.Semaphore(0)

        def tap(way: str) -> Path | None:
            return Path(self.tap_dir) / f"route{index}-conn{number}-{way}.bin" if self.tap_dir else None

        Pump(near, far, towards, self.chunk, tap("out"), done)
        Pump(far, near, back, self.chunk, tap("back"), done)
        done.acquire()
        done.acquire()
        near.close()
        far.close()

    def close(self) -> None:
        self._closed.set()
        for listener in self.listeners:
            listener.close()


def realtime_scheduling() -> bool:
    """Run the relay's threads under SCHED_FIFO where allowed (root): the link is hardware in the
    emulation, and its delivery times must not wait for the parties' time slices on a loaded machine.
    Its threads block in recv and sleep between deliveries, so they take little CPU from the parties."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
        return True
    except (OSError, AttributeError):  # not root: the ordinary scheduler, with the same delivery times
        return False


def main(argv: list[str] | None = None) -> int:
    """Process entry: argv[0] is a JSON config; print the ports and the bare path's round trip (what the delays
    were shortened by), serve until stdin closes, print CPU seconds."""
    config = json.loads((argv or sys.argv[1:])[0])
    realtime_scheduling()
    spec = LinkSpec(config["bandwidth_mbps"], config["rtt_ms"])
    relay = Relay(spec, [tuple(t) for t in config["targets"]], host=config.get("host", "127.0.0.1"),
                  tap_dir=config.get("tap_dir"))
    print(json.dumps({"ports": relay.ports, "bare_rtt_ms": round(relay.bare_rtt_s * 1000, 4)}), flush=True)
    sys.stdin.read()  # the parent closes our stdin to stop us (or dies: the same EOF, no orphan relay)
    relay.close()
    times = os.times()
    print(json.dumps({"cpu_seconds": times.user + times.system}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
