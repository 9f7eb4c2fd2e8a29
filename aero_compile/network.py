"""The link between the parties, defined once: ``--network``, ``--bandwidth-mbps``, ``--rtt-ms``.

    aero-compile gpt2 --network wan                      # the preset: 100 Mbit/s, 80 ms round trip
    aero-compile gpt2 --network wan --rtt-ms 20          # the preset, with one figure overridden

The cost analyzer's CLI extension and the private-run layer (``targets/private``) both read the link
with :func:`link_from_args`; the core CLI adds the options with :func:`add_network_arguments` and
checks them with :func:`check_network_arguments` before anything runs. The presets are data
(``cost/data/networks.json``); the record, ``Link``, is ``cost.profiles.Network`` (name,
bandwidth_mbps, rtt_ms; ``transfer_s(bytes)``, ``rtt_s``). Importing this module loads nothing
heavy (the CLI imports it before torch).
"""

from __future__ import annotations

import argparse
import math

from .errors import AeroError

DEFAULT_NETWORK = "lan"


def __getattr__(name: str):
    if name == "Link":  # on use: the cost package imports torch
        from .cost.profiles import Network

        return Network
    raise AttributeError(name)


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """The three link options, in their own group (read by the analysis and by private runs)."""
    group = parser.add_argument_group("network between the parties (the cost analysis and private runs)")
    group.add_argument("--network", default=None,
                       help="network preset: lan or wan (100 Mbit/s, 80 ms) (default: lan)")
    group.add_argument("--bandwidth-mbps", type=float, help="link bandwidth in Mbit/s (overrides the preset)")
    group.add_argument("--rtt-ms", type=float, help="round-trip time in ms (overrides the preset)")


def check_network_arguments(args: argparse.Namespace):
    """The link the options name; a one-line AeroError naming the option when one is out of range."""
    bandwidth, rtt = args.bandwidth_mbps, args.rtt_ms
    if bandwidth is not None and not (bandwidth > 0 and math.isfinite(bandwidth)):
        raise AeroError(f"--bandwidth-mbps must be a positive number of Mbit/s, got {bandwidth:g}")
    if rtt is not None and not (rtt >= 0 and math.isfinite(rtt)):
        raise AeroError(f"--rtt-ms must be a non-negative number of milliseconds, got {rtt:g}")
    from .cost.profiles import network_presets, resolve_network

    name = args.network or DEFAULT_NETWORK
    if name not in network_presets():
        raise AeroError(f"unknown network '{name}': --network is one of {', '.join(network_presets())}; "
                        "or give --bandwidth-mbps and --rtt-ms")
    return resolve_network(name, bandwidth, rtt)


def link_from_args(args: argparse.Namespace):
    """The link of this run (the preset with any figure the options override), checked."""
    return check_network_arguments(args)
