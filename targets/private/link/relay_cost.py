"""What the emulated link's relay costs in CPU per message and per byte, on this machine.

On a machine with as many cores as parties, the relay's CPU is taken from the parties: a private run over
an emulated link at 1 Gbit/s / 1 ms was 0.10-0.27 s a pass slower than the analyzer's prediction for a real
link (gpt2-tiny, T=64, CrypTen tfp and ttp), about what the relay spent on that pass's messages. The analyzer
prices an emulated link with this cost added (``cost/latency.py``, ``emulation_s``); a real link has none.

    python -m aero_compile.targets.private.link.relay_cost --out aero_compile/cost/data/relay.json

Each case sends ``count`` round trips of ``size`` bytes through a relay to an echo server and reads the relay
process's CPU seconds (``RelayProcess.stop``); an idle relay's CPU (start-up) is taken out. Per message from
small messages, per byte from 1 MiB messages after their messages' share.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading
import time
from pathlib import Path

from aero_compile.fileio import write_text_atomic

from .check import _read_exactly as _receive  # link-check's reader: exactly count bytes
from .process import RelayProcess
from .spec import LinkSpec

_LENGTH = struct.Struct(">Q")
SPEC = LinkSpec(1000, 1)  # LAN: the link where the relay's CPU shows (on WAN the parties wait it out)
SMALL, LARGE = (64, 2000), (1 << 20, 100)  # (bytes, round trips): per message; per byte


def _echo_server() -> tuple[str, int]:
    """A server that sends every length-prefixed message back."""
    listener = socket.create_server(("127.0.0.1", 0))

    def session(sock: socket.socket) -> None:
        with sock:
            try:
                while True:
                    (size,) = _LENGTH.unpack(_receive(sock, _LENGTH.size))
                    sock.sendall(_LENGTH.pack(size) + _receive(sock, size))
            except (ConnectionError, OSError):
                return

    def serve() -> None:
        while True:
            sock, _ = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=session, args=(sock,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()


def relay_cpu(size: int, count: int, spec: LinkSpec = SPEC) -> dict:
    """The relay's CPU seconds for ``count`` round trips of ``size`` bytes (2 x count messages through it)."""
    relay = RelayProcess(spec, [_echo_server()])
    try:
        if count:
            with socket.create_connection(("127.0.0.1", relay.ports[0])) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                message = _LENGTH.pack(size) + bytes(size)
                for _ in range(count):
                    sock.sendall(message)
                    _receive(sock, _LENGTH.size + size)
    finally:
        cpu = relay.stop()
    return {"size": size, "round_trips": count, "messages": 2 * count, "bytes": 2 * count * (size + _LENGTH.size),
            "cpu_seconds": cpu}


def measure(small=SMALL, large=LARGE) -> dict:
    """``s_per_message`` and ``s_per_byte`` of the relay here, with the cases they came from."""
    from .. import calibration

    started = time.perf_counter()
    idle = relay_cpu(0, 0)
    few, many = relay_cpu(*small), relay_cpu(*large)
    per_message = max(0.0, (few["cpu_seconds"] - idle["cpu_seconds"]) / few["messages"])
    per_byte = max(0.0, (many["cpu_seconds"] - idle["cpu_seconds"] - per_message * many["messages"]) / many["bytes"])
    where = calibration.machine()
    return {"s_per_message": float(f"{per_message:.4g}"), "s_per_byte": float(f"{per_byte:.4g}"),
            "link": SPEC.record(emulated=True), "cases": [idle, few, many], "cpu": where["cpu"], "cores": where["cores"],
            "date": where["date"], "seconds": round(time.perf_counter() - started, 1),
            "command": "python -m aero_compile.targets.private.link.relay_cost --out aero_compile/cost/data/relay.json",
            "note": "CPU the emulated link's relay spends per message and per byte it forwards (user + system, all its "
                    "threads), on this machine; the analyzer adds it to a prediction for an emulated link "
                    "(cost/latency.py, emulation_s): the relay shares the parties' cores"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (atomically)")
    args = parser.parse_args(argv)
    result = measure()
    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    print(f"relay: {result['s_per_message'] * 1e6:.0f} us a message, {result['s_per_byte'] * 1e9:.2f} s a GB "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
