"""``aero-compile link-check --bandwidth-mbps B --rtt-ms R``: measure what the emulated link delivers.

Pushes a ping-pong (small messages: the median round trip) and a bulk transfer (the rate at which the
receiver gets the bytes) through the same relay process the private runs use, and prints the achieved
figures next to the settings, with the relay's own CPU seconds and the bare loopback round trip the relay
took out of the set delay (so that the end-to-end round trip, endpoints included, is the setting).

    aero-compile link-check --bandwidth-mbps 100 --rtt-ms 80
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import threading
import time

from .process import RelayProcess
from .relay import realtime_scheduling
from .spec import LinkSpec

PING_BYTES = 64
PING_SECONDS = 3.0  # enough pings for a stable median: 37 at 80 ms, 200 (the cap) at 1 ms
BULK_SECONDS = 1.0  # a bulk transfer of about one second of line time
_LENGTH = struct.Struct(">Q")


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    buffer = bytearray()
    while len(buffer) < count:
        data = sock.recv(count - len(buffer))
        if not data:
            raise ConnectionError("the link closed early")
        buffer += data
    return bytes(buffer)


class Endpoint:
    """The far end: echoes pings; for a bulk transfer, records when the first and the last bytes arrived."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.bulk_times: tuple[float, float, int] | None = None  # first arrival, last arrival, first chunk bytes
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._session, args=(sock,), daemon=True).start()

    def _session(self, sock: socket.socket) -> None:
        with sock:
            mode = sock.recv(1)
            if mode == b"P":
                while data := sock.recv(PING_BYTES):
                    data += _read_exactly(sock, PING_BYTES - len(data))
                    sock.sendall(data)
            elif mode == b"B":
                (total,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
                received, first, first_bytes = 0, None, 0
                while received < total:
                    got = len(sock.recv(min(1 << 20, total - received)))
                    if got == 0:
                        return
                    if first is None:
                        first, first_bytes = time.monotonic(), got
                    received += got
                self.bulk_times = (first, time.monotonic(), first_bytes)
                sock.sendall(b"K")

    def close(self) -> None:
        self.listener.close()


def ping_pong(port: int, count: int) -> list[float]:
    """Round-trip times (s) of ``count`` small messages, after two warm-up rounds."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"P")
        message, times = b"p" * PING_BYTES, []
        for index in range(count + 2):
            start = time.perf_counter()
            sock.sendall(message)
            _read_exactly(sock, PING_BYTES)
            if index >= 2:
                times.append(time.perf_counter() - start)
        return times


def bulk(port: int, endpoint: Endpoint, total: int) -> float:
    """Bits per second at which the far end received ``total`` bytes (after the first chunk)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.sendall(b"B" + _LENGTH.pack(total))
        payload = memoryview(bytes(1 << 20))
        sent = 0
        while sent < total:
            count = min(len(payload), total - sent)
            sock.sendall(payload[:count])
            sent += count
        _read_exactly(sock, 1)
    first, last, first_bytes = endpoint.bulk_times
    return (total - first_bytes) * 8 / (last - first)


def measure_link(spec: LinkSpec, *, ping_seconds: float = PING_SECONDS, bulk_seconds: float = BULK_SECONDS) -> dict:
    """Achieved round trip and throughput of the emulated link ``spec``, and the relay's CPU seconds."""
    spec.checked()
    endpoint = Endpoint()
    try:
        with RelayProcess(spec, [endpoint.address]) as relay:
            (port,) = relay.ports
            count = int(min(200, max(10, ping_seconds / max(spec.rtt_ms / 1000, 1e-3))))
            rtts = ping_pong(port, count)
            total = int(max(1 << 20, spec.bits_per_second / 8 * bulk_seconds))
            throughput = bulk(port, endpoint, total)
            bare_rtt_ms = relay.bare_rtt_ms
    finally:
        endpoint.close()
    return {"rtt_ms": statistics.median(rtts) * 1000, "pings": count, "ping_bytes": PING_BYTES,
            "throughput_mbps": throughput / 1e6, "bulk_bytes": total, "relay_cpu_seconds": relay.cpu_seconds,
            "bare_rtt_ms": bare_rtt_ms}


def _error(achieved: float, setting: float) -> str:
    return f"{100 * (achieved - setting) / setting:+.1f}%" if setting else "-"


def build_parser() -> argparse.ArgumentParser:
    """The parser of `aero-compile link-check --bandwidth-mbps B --rtt-ms R`."""
    parser = argparse.ArgumentParser(prog="aero-compile link-check",
                                     description="Measure the round trip and throughput of an emulated link.")
    parser.add_argument("--bandwidth-mbps", type=float, required=True, help="link bandwidth per direction, Mbit/s")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round-trip time, ms (one-way delay is half)")
    return parser


def link_check_command(argv: list[str]) -> int:
    """`aero-compile link-check`: a ping-pong and a bulk transfer through the emulated link, against its settings."""
    args = build_parser().parse_args(argv)
    spec = LinkSpec(args.bandwidth_mbps, args.rtt_ms).checked()
    # The pings measure the link, not how soon this machine's scheduler wakes a process: the endpoints get the
    # relay's real-time class too where allowed (root). Measured under load from other jobs, an ordinary
    # priority added up to 15% to an 80 ms round trip; real-time, 0.2%.
    realtime_scheduling()
    result = measure_link(spec)
    print(f"emulated link (user-space relay on loopback): {spec.bandwidth_mbps:g} Mbit/s, {spec.rtt_ms:g} ms RTT")
    print(f"  {'':<11}{'setting':>14}{'achieved':>14}{'error':>9}")
    print(f"  {'RTT':<11}{spec.rtt_ms:>11.3f} ms{result['rtt_ms']:>11.3f} ms{_error(result['rtt_ms'], spec.rtt_ms):>9}"
          f"   median of {result['pings']} pings of {PING_BYTES} B")
    print(f"  {'throughput':<11}{spec.bandwidth_mbps:>9.1f} Mbit/s{result['throughput_mbps']:>9.1f} Mbit/s"
          f"{_error(result['throughput_mbps'], spec.bandwidth_mbps):>9}   {result['bulk_bytes'] / 1e6:.1f} MB bulk")
    print(f"  bare path  {result['bare_rtt_ms']:.3f} ms RTT on plain loopback, taken out of the set delay (the "
          "machine's own share of any round trip)")
    print(f"  relay CPU  {result['relay_cpu_seconds']:.2f} s (its own process; not in any party's figures)")
    return 0
