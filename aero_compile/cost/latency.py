"""Latency of one private forward pass: the protocol's message pattern over the link, plus measured compute.

    latency = delays x one-way delay  +  bytes one way / bandwidth  +  compute

* **delays**: how many one-way link delays the run waits, from the profile's ``latency`` section:
  ``one_way_delays_per_round`` times what the protocol counts (CrypTen: rounds on the schedule;
  SPU: messages the model owner sends, from the entries' ``messages``). Both figures are fitted to private
  runs under emulated links (the section's ``measured``). SPU's silent-OT refills (~1,300 or ~2,200
  messages at once, sent in bulk) wait ``refill_one_way_delays_per_message`` each instead (measured
  under emulated links: ~0.1; absent: the same as any message).
  With CrypTen's ``ttp`` provider the model owner also asks the dealer, ``dealer_round_trips_per_round``
  times per counted round, and each request is a round trip (2 one-way delays). The client does not wait
  for the dealer: its message of a round is in flight while the owner's request is, so a round costs
  the longer of the two, ``max(one_way_delays_per_round, 2 x dealer_round_trips_per_round)``, not their sum;
  on a link (not loopback) each such round also pays ``dealer.link_s_per_round`` seconds: a line fitted
  under emulated links at 1, 10 and 40 ms RTT has that intercept (the dealer and the owner waking from
  idle at every request, which a loopback timing of compute does not hold).
* **bytes one way**: the profile's counted bytes times ``wire_bytes_per_counted_byte`` (both directions
  cross the link at once, so one direction's bytes set the transfer time).
* **emulation** (an emulated link only, ``Network.emulated``): the relay that emulates the link runs on the
  parties' cores and takes its CPU from them: ``relay.json``'s seconds per message and per byte (measured by
  ``targets/private/link/relay_cost.py``) times the messages (both directions; under ttp the owner's dealer
  round trips too) and the bytes (both directions) of the pass. A real link has no such term.
* **compute**: each op's ``seconds`` (measured by ``aero-compile calibrate ENGINE`` on this CPU and core
  count, between two parties over loopback: it holds loopback's own per-round cost); plus, for engines
  whose calibration ran without sockets (SPU's simulator), ``loopback_s_per_message`` per one-way delay;
  plus ``fixed_s_per_execution``: what one execution of a program costs whatever it computes (SPU: run
  setup and dispatch of the executable, measured on an empty program between two processes).

A profile without a ``latency`` section keeps the model every profile had before: one RTT (2 one-way
delays) per counted round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from .profiles import DATA_DIR, Network, Profile

DEFAULT_DELAYS_PER_ROUND = 2.0  # one round trip per round: the model of profiles that state none


@dataclass(frozen=True)
class LatencyModel:
    """A profile's network term: what it counts and how many one-way delays each of those costs."""

    one_way_delays_per_round: float = DEFAULT_DELAYS_PER_ROUND
    counts: str = "rounds"  # or "messages": the entries' messages (falls back to rounds)
    loopback_s_per_message: float = 0.0  # socket cost of one one-way message the compute term lacks (SPU)
    dealer_round_trips_per_round: float = 0.0  # CrypTen ttp only (see ``for_provider``)
    fixed_s_per_execution: float = 0.0  # compute one execution costs whatever it does (SPU: an empty program's)
    refill_one_way_delays_per_message: float | None = None  # SPU's silent-OT refills (None: as any message)
    link_s_per_round: float = 0.0  # CrypTen ttp only: seconds a counted round pays on a link beyond its delays

    @classmethod
    def of(cls, profile: Profile, provider: str | None = None) -> LatencyModel:
        """The model a profile states (``latency`` section); ``provider="ttp"``: with the dealer's round trips."""
        section = profile.data.get("latency", {})
        dealer = section.get("dealer", {}) if provider == "ttp" else {}
        return cls(float(section.get("one_way_delays_per_round", DEFAULT_DELAYS_PER_ROUND)),
                   section.get("counts", "rounds"), float(section.get("loopback_s_per_message", 0.0)),
                   float(dealer.get("round_trips_per_round", 0.0)), float(section.get("fixed_s_per_execution", 0.0)),
                   section.get("refill_one_way_delays_per_message"), float(dealer.get("link_s_per_round", 0.0)))

    def delays(self, counted: float, refills: float = 0.0) -> float:
        """One-way delays waited for ``counted`` rounds (or messages), ``refills`` of them silent-OT refill
        messages: the exchange's flight and the owner's round trips to the dealer overlap (the client's
        message travels while the owner waits for the dealer); a refill's messages go out in bulk."""
        per_message = max(self.one_way_delays_per_round, 2 * self.dealer_round_trips_per_round)
        per_refill = per_message if self.refill_one_way_delays_per_message is None \
            else float(self.refill_one_way_delays_per_message)
        return (counted - refills) * per_message + refills * per_refill

    def emulation_s(self, counted: float, wire_bytes: float, net: Network) -> float:
        """The relay's CPU for a pass over an emulated link (0 on a real one): each counted round or message is
        one message each way (two), plus the owner's dealer round trips under ttp; ``wire_bytes`` flow each way."""
        if not net.emulated:
            return 0.0
        cost = relay_cost()
        messages = 2 * counted * (1 + self.dealer_round_trips_per_round)
        return messages * cost["s_per_message"] + 2 * wire_bytes * cost["s_per_byte"]

    def network_s(self, counted: float, wire_bytes: float, net: Network, refills: float = 0.0) -> float:
        """Seconds on the link: the delays (each also paying the sockets' own cost where the compute term
        lacks it) plus one direction's bytes at the link's bandwidth."""
        on_a_link = self.link_s_per_round * (counted - refills) if net.one_way_s > 0 else 0.0
        return (self.delays(counted, refills) * (net.one_way_s + self.loopback_s_per_message) + on_a_link
                + net.transfer_s(wire_bytes) + self.emulation_s(counted, wire_bytes, net))


@lru_cache(maxsize=1)
def relay_cost() -> dict:
    """``relay.json``: the emulated link's relay CPU per message and per byte on the machine that measured it."""
    return json.loads((DATA_DIR / "relay.json").read_text())


# The fields of a profile's ``latency`` section measured under emulated links (``benchmarks/link_delays.py``).
MEASURED_DELAY_FIELDS = ("one_way_delays_per_round", "dealer", "note", "measured", "refill_one_way_delays_per_message",
                         "refill_measured", "link_fit")


def keep_measured_delays(fresh: dict, previous: dict | None) -> dict:
    """A calibrator's new ``latency`` section, keeping the delays that ``previous`` measured under emulated links:
    a calibration times compute over loopback and cannot re-measure them, so it must not reset them."""
    if not previous or "measured" not in previous:
        return fresh
    return {**fresh, **{key: previous[key] for key in MEASURED_DELAY_FIELDS if key in previous}}


def run_network(link: dict | None) -> Network | str:
    """The network a private run crossed, as its measured record states it (``link``: {"bandwidth_mbps",
    "rtt_ms", "emulated"}); no emulated link: ``loopback`` (both parties on this machine)."""
    if link and link.get("emulated"):
        return Network("emulated", float(link["bandwidth_mbps"]), float(link["rtt_ms"]), emulated=True)
    return "loopback"


def latency_prediction(report) -> dict:
    """The analyzer's online latency of a ``CostReport``, as a measured record's ``predicted`` states it:
    total, its compute and network parts, per op kind, and the network it was priced for."""
    net = report.network
    return {"latency_s": round(report.latency_s, 6), "compute_s": round(report.compute_s, 6),
            "network_s": round(report.latency_s - report.compute_s, 6),
            "emulation_s": round(report.emulation_s, 6),  # of network_s: the relay's CPU (emulated links only)
            "network": {"name": net.name, "bandwidth_mbps": None if net.bandwidth_mbps == float("inf") else net.bandwidth_mbps,
                        "rtt_ms": net.rtt_ms},
            "by_op_latency_s": {kind: round(cost.latency_s, 6) for kind, cost in report.by_op.items()}}
