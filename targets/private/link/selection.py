"""Which link a private run uses, from the network options (``--network``, ``--bandwidth-mbps``, ``--rtt-ms``).

    link = requested_link("wan", None, None)     # LinkSpec(100, 80): emulated
    link = requested_link("lan", None, None)     # None: bare loopback (the default)

The presets are the cost analyzer's (``cost.profiles.resolve_network``): one definition of what ``lan``
and ``wan`` mean. A link is emulated when the user names one: ``--network`` other than ``lan``, or an
explicit bandwidth or round-trip time (over the named preset's other figure). ``lan`` stays bare
loopback: its 10 Gbit/s is faster than the relay can emulate, and loopback is what it stands for.
"""

from __future__ import annotations

from aero_compile.errors import AeroError

from .spec import MAX_BANDWIDTH_MBPS, LinkSpec

BARE_PRESET = "lan"


def requested_link(network: str | None, bandwidth_mbps: float | None, rtt_ms: float | None) -> LinkSpec | None:
    """The emulated link the options ask for (checked: AeroError if it cannot be held), or None for loopback."""
    from aero_compile.cost.profiles import resolve_network

    name = network or BARE_PRESET
    if name == BARE_PRESET and bandwidth_mbps is None and rtt_ms is None:
        return None
    resolved = resolve_network(name, bandwidth_mbps, rtt_ms)
    if bandwidth_mbps is None and resolved.bandwidth_mbps > MAX_BANDWIDTH_MBPS:
        raise AeroError(f"the {name} preset's {resolved.bandwidth_mbps:g} Mbit/s is more than the emulated link can "
                        f"hold on this machine ({MAX_BANDWIDTH_MBPS:g} Mbit/s): give --bandwidth-mbps with --rtt-ms")
    return LinkSpec(resolved.bandwidth_mbps, resolved.rtt_ms).checked()


def loopback_record() -> dict:
    """The ``link`` entry of a run on bare loopback (no emulation: the machine's own speed)."""
    return {"bandwidth_mbps": None, "rtt_ms": None, "emulated": False}


def refuse_on_multihost(link: LinkSpec | None, flag: str) -> None:
    """A multi-host party runs over the real network between its hosts: an emulated link is refused there."""
    if link is not None:
        raise AeroError(f"an emulated link ({link.bandwidth_mbps:g} Mbit/s, {link.rtt_ms:g} ms) cannot be used with "
                        f"{flag}: parties on separate hosts talk over the real network; drop --network/"
                        "--bandwidth-mbps/--rtt-ms, or run all parties here with --run-private")


def describe_link(measured_entry: dict) -> str:
    """One line for the terminal: which link a run had, and what emulating it cost."""
    link = measured_entry.get("link") or loopback_record()
    if not link.get("emulated"):
        return "link: bare loopback (no emulated link; name one with --network wan or --bandwidth-mbps/--rtt-ms)"
    cpu = measured_entry.get("relay_cpu_seconds")
    spent = (f"; the relay process used {cpu:.2f} CPU s on the parties' cores, which the prediction prices"
             if cpu is not None else "")
    return (f"link: emulated {link['bandwidth_mbps']:g} Mbit/s per direction, {link['rtt_ms']:g} ms RTT "
            f"(user-space relay on loopback{spent})")
