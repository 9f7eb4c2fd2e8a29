"""The emulated link: bytes unchanged, the set delay and bandwidth held, bad settings refused in one line."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading

import pytest

from aero_compile.errors import AeroError
from aero_compile.targets.private.link.check import measure_link
from aero_compile.targets.private.link.process import RelayProcess
from aero_compile.targets.private.link.spec import MAX_BANDWIDTH_MBPS, LinkSpec


def _echo_server():
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        sock, _ = listener.accept()
        with sock:
            while data := sock.recv(1 << 16):
                sock.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return listener


def test_relay_delivers_the_bytes_unchanged_and_reports_its_cpu():
    listener = _echo_server()
    payload = os.urandom(3 << 20)
    with RelayProcess(LinkSpec(500, 2), [listener.getsockname()]) as relay:
        with socket.create_connection(("127.0.0.1", relay.ports[0])) as sock:
            received = bytearray()
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            while len(received) < len(payload):
                data = sock.recv(1 << 20)
                assert data, "the relay closed the connection early"
                received += data
            sender.join()
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert relay.cpu_seconds is not None and relay.cpu_seconds > 0
    assert relay.process.returncode == 0


def test_a_short_link_holds_its_round_trip_and_rate():
    # Loose bounds (the test machine is shared); docs/link.md has the 5% table for 100/1000 Mbit/s x 1/40/80 ms.
    result = measure_link(LinkSpec(200, 20), ping_seconds=0.4, bulk_seconds=0.5)
    assert result["rtt_ms"] == pytest.approx(20, rel=0.15)
    assert result["throughput_mbps"] == pytest.approx(200, rel=0.15)


@pytest.mark.parametrize("bandwidth, rtt, words", [
    (0, 10, "must be positive"), (-5, 10, "must be positive"), (MAX_BANDWIDTH_MBPS * 2, 10, "more than the emulated"),
    (100, -1, "zero or positive"), (float("nan"), 10, "finite")])
def test_bad_links_are_refused(bandwidth, rtt, words):
    with pytest.raises(AeroError, match=words):
        LinkSpec(bandwidth, rtt).checked()


def test_link_check_refuses_a_bad_link_in_one_line(capfd):
    # through main() in this process: `link-check` as its own process is the next test's
    from aero_compile.cli import main

    assert main(["link-check", "--bandwidth-mbps", "-5", "--rtt-ms", "10"]) == 2
    done = capfd.readouterr()
    assert done.out == ""
    assert done.err.strip().count("\n") == 0 and "must be positive" in done.err


def test_link_check_holds_a_1_ms_round_trip_end_to_end():
    # The case the machine's own turnaround shows in: ~50 us of 1 ms. The relay takes the bare loopback path's
    # round trip out of the delay (relay.bare_round_trip); without that this read +5 to +7%. 10% is coarse on
    # purpose (a shared machine); docs/link.md has the 5% table. As the user runs it: its own process, real-time.
    done = subprocess.run([sys.executable, "-m", "aero_compile", "link-check", "--bandwidth-mbps", "100",
                           "--rtt-ms", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.strip()}
    assert float(rows["RTT"][3]) == pytest.approx(1.0, rel=0.10), done.stdout
    assert float(rows["throughput"][3]) == pytest.approx(100, rel=0.05), done.stdout
    bare_ms = float(rows["bare"][2])
    assert 0 < bare_ms <= 0.4, done.stdout  # measured, and within the cap the relay takes out
