"""The settings of an emulated link (bandwidth, round-trip time), checked before anything starts.

    spec = LinkSpec(bandwidth_mbps=100, rtt_ms=80).checked()   # AeroError on a link we cannot emulate
    spec.record(emulated=True)   # -> {"bandwidth_mbps": 100, "rtt_ms": 80, "emulated": True}

Bandwidth is per direction (a full-duplex link, as the cost model prices it); the one-way delay is
half the round-trip time, in each direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aero_compile.errors import AeroError

# What the user-space relay holds on this machine within 5% (link-check, bulk transfer through one
# connection, 2 shared cores under load; docs/link.md has the measurements). Above it the relay's own
# copying, not the setting, would set the rate, so such a link is refused rather than emulated wrongly.
MAX_BANDWIDTH_MBPS = 2000.0
# The relay keeps every byte in flight in memory (bandwidth x one-way delay); 10 s of delay is far
# beyond any WAN and keeps that bounded.
MAX_RTT_MS = 10_000.0


@dataclass(frozen=True)
class LinkSpec:
    """One emulated link: ``bandwidth_mbps`` Mbit/s in each direction, ``rtt_ms`` round trip."""

    bandwidth_mbps: float
    rtt_ms: float

    @property
    def bits_per_second(self) -> float:
        return self.bandwidth_mbps * 1e6

    @property
    def one_way_delay_s(self) -> float:
        return self.rtt_ms / 2000.0

    def checked(self) -> "LinkSpec":
        """This spec, or an AeroError naming the setting that no emulated link can have."""
        for name, value in (("--bandwidth-mbps", self.bandwidth_mbps), ("--rtt-ms", self.rtt_ms)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise AeroError(f"{name} must be a finite number, got {value!r}")
        if self.bandwidth_mbps <= 0:
            raise AeroError(f"--bandwidth-mbps must be positive, got {self.bandwidth_mbps:g}: "
                            "give the link's rate in Mbit/s, e.g. 100")
        if self.bandwidth_mbps > MAX_BANDWIDTH_MBPS:
            raise AeroError(f"--bandwidth-mbps {self.bandwidth_mbps:g} is more than the emulated link can hold on "
                            f"this machine ({MAX_BANDWIDTH_MBPS:g} Mbit/s): use at most that, or run without "
                            "a link (--network lan is bare loopback)")
        if self.rtt_ms < 0:
            raise AeroError(f"--rtt-ms must be zero or positive, got {self.rtt_ms:g}")
        if self.rtt_ms > MAX_RTT_MS:
            raise AeroError(f"--rtt-ms {self.rtt_ms:g} is over the emulated link's limit of {MAX_RTT_MS:g} ms")
        return self

    def record(self, emulated: bool) -> dict:
        """The ``link`` entry of a measured block."""
        return {"bandwidth_mbps": self.bandwidth_mbps, "rtt_ms": self.rtt_ms, "emulated": emulated}
