"""Run the relay (``link.relay``) as a process of its own: the ports to connect to, its CPU seconds at the end.

    with RelayProcess(LinkSpec(100, 80), [("127.0.0.1", 5000)]) as relay:
        port = relay.ports[0]          # the parties connect here
    relay.bare_rtt_ms                  # the bare loopback round trip the relay took out of the set RTT
    relay.cpu_seconds                  # what the emulation itself cost (user + system, all its threads)

A process of its own keeps the relay's CPU out of the parties' (each party reports only its own
time) and lets the run say what the emulation cost. It stops when its stdin closes, so it never
outlives the process that started it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from aero_compile.errors import AeroError

from .spec import LinkSpec

START_TIMEOUT_S = 30.0


class RelayProcess:
    """A relay process forwarding to ``targets`` through the emulated link ``spec``."""

    def __init__(self, spec: LinkSpec, targets: list[tuple[str, int]], *, tap_dir: str | None = None):
        self.spec = spec.checked()
        config = {"bandwidth_mbps": spec.bandwidth_mbps, "rtt_ms": spec.rtt_ms,
                  "targets": [list(t) for t in targets], "tap_dir": tap_dir}
        self.process = subprocess.Popen([sys.executable, "-m", "aero_compile.targets.private.link.relay",
                                         json.dumps(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise AeroError(f"the emulated link did not start (relay exit code {self.process.returncode})")
        started = json.loads(line)
        self.ports: list[int] = started["ports"]
        self.bare_rtt_ms: float = started["bare_rtt_ms"]  # taken out of the set RTT: the machine's own share
        self.cpu_seconds: float | None = None

    def stop(self) -> float | None:
        """Stop the relay; its CPU seconds (None if it had died)."""
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                line = self.process.stdout.readline()
                self.process.wait(timeout=10)
                if line:
                    self.cpu_seconds = json.loads(line)["cpu_seconds"]
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.cpu_seconds

    def __enter__(self) -> "RelayProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
