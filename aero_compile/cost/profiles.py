"""Protocol profiles and network presets: data files under ``cost/data``, read here.

A profile says, per op kind, how rounds, bytes and seconds grow with an op's *features* (see
``features.py``): ``cost = sum(coefficient * feature)``. Example entry::

    "relu": {"rounds": {"calls": 9}, "bytes": {"elements": 464}}

Ops whose rounds depend on the reduced length (CrypTen's max, hence softmax) carry a table measured
per length instead: ``"by_length": {"128": {"rounds": 116, "bytes_per_row": 190512}, ...}``, and, where
the max is CrypTen's log reduction, the linear forms that price it exactly at every length
(``"log_reduction": {"rounds": {...}, "bytes": {...}}``, features in ``log_reduction.py``).

Ops whose bytes follow no line (SPU cheetah: elementwise products switch from cached Beaver triples to
direct HE at 16,384 elements and pay per 8192-slot ciphertext, so the cost per element steps) carry the
measured points instead, bytes interpolated piecewise-linearly in one feature:
``"bytes_points": {"feature": "elements", "points": [[128, 12608], [256, 25216], ...]}`` (``bytes_at``).

Latency (``latency.py``) reads two more figures per entry, both measured by ``aero-compile calibrate``:
``seconds`` (a linear form) or ``seconds_points`` (points, as bytes): the op's compute on this machine;
``messages`` (a linear form, which may use ``log2_length``: a norm's max is a tree of comparisons) or
``messages_points``: the messages one call sends without a silent-OT refill, plus
``messages_refills.per_element`` x elements, the refills' expected share (SPU, ``targets/spu/message_fit.py``;
where an entry has none of these, its rounds are its messages).
"""

from __future__ import annotations

import bisect
import json
import math
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from ..errors import AeroError
from . import log_reduction

DATA_DIR = Path(__file__).parent / "data"
PROFILE_NAMES = ("crypten", "bumblebee", "spu-cheetah")


@dataclass(frozen=True)
class Network:
    """A link between the two parties."""

    name: str
    bandwidth_mbps: float
    rtt_ms: float
    emulated: bool = False  # the relay between parties on one machine (its CPU is priced: ``latency.py``)

    def transfer_s(self, nbytes: float) -> float:
        if math.isinf(self.bandwidth_mbps):  # no link (loopback): its cost is inside the measured compute
            return 0.0
        return nbytes * 8 / (self.bandwidth_mbps * 1e6)

    @property
    def rtt_s(self) -> float:
        return self.rtt_ms / 1000

    @property
    def one_way_s(self) -> float:
        """The delay of one message in one direction: half the round trip."""
        return self.rtt_ms / 2000


def network_presets() -> dict[str, dict]:
    return json.loads((DATA_DIR / "networks.json").read_text())


def resolve_network(network: str | Network = "lan", bandwidth_mbps: float | None = None,
                    rtt_ms: float | None = None) -> Network:
    """A preset by name (``lan``, ``wan``), with explicit bandwidth / RTT overriding it."""
    if isinstance(network, Network):
        base = network
    else:
        presets = network_presets()
        if network not in presets:
            raise AeroError(f"unknown network '{network}': presets are {', '.join(presets)}; "
                            "or give --bandwidth-mbps and --rtt-ms")
        preset = presets[network]
        # a preset without a bandwidth (loopback) has no link to cross: infinite, transfer free
        bandwidth = math.inf if preset["bandwidth_mbps"] is None else float(preset["bandwidth_mbps"])
        base = Network(network, bandwidth, float(preset["rtt_ms"]))
    bandwidth = base.bandwidth_mbps if bandwidth_mbps is None else float(bandwidth_mbps)
    rtt = base.rtt_ms if rtt_ms is None else float(rtt_ms)
    if not bandwidth > 0 or not rtt >= 0 or (math.isinf(bandwidth) and bandwidth_mbps is not None):
        raise AeroError(f"bandwidth must be positive and RTT non-negative (got {bandwidth} Mbit/s, {rtt} ms)")
    name = base.name if (bandwidth, rtt) == (base.bandwidth_mbps, base.rtt_ms) else "custom"
    return Network(name, bandwidth, rtt, emulated=base.emulated)


@dataclass(frozen=True)
class ProtocolCost:
    rounds: int
    bytes: float
    seconds: float  # local computation
    approximate: bool = False  # a length between (or beyond) the measured ones
    messages: float | None = None  # messages one call sends on average (None: its rounds)
    refill_messages: float = 0.0  # of those, the silent-OT refills' expected share (they wait fewer delays)


@dataclass
class Profile:
    """One protocol's cost model, as loaded from its JSON file."""

    name: str
    data: dict
    path: str = ""
    ops: dict = field(init=False)

    def __post_init__(self):
        self.ops = self.data.get("ops", {})

    @property
    def schedule(self) -> str:
        """"sequential": every op waits for the previous one; "critical_path": independent ops share rounds."""
        return self.data.get("schedule", "sequential")

    @property
    def wire_bytes_per_counted_byte(self) -> float:
        """How many bytes cross the link (one direction) per byte the profile counts."""
        return float(self.data.get("wire_bytes_per_counted_byte", 1.0))

    def supports(self, kind: str) -> bool:
        return kind in self.ops

    def variant(self, key: str | None) -> Profile:
        """This profile under other engine settings (``variants.KEY.ops`` replace the entries they name).

        None or the profile's own ``default_variant`` is the profile itself; a variant it was never
        measured under is a one-line AeroError.
        """
        if key is None or key == self.data.get("default_variant"):
            return self
        variants = self.data.get("variants", {})
        if key not in variants:
            known = ", ".join([self.data.get("default_variant", "(default)"), *variants])
            raise AeroError(f"the {self.name} profile was not measured under settings '{key}' (it has: {known}); "
                            f"measure them with `aero-compile calibrate {self.name} --settings {key}`")
        # compute seconds are measured under the default settings only: a variant's entry keeps its base's
        timed = ("seconds", "seconds_points", "seconds_fit", "seconds_by_provider")
        ops = {name: {**{k: self.ops[name][k] for k in timed if k in self.ops.get(name, {})}, **entry}
               for name, entry in variants[key]["ops"].items()}
        data = {**self.data, "ops": {**self.ops, **ops}, "variant": key}
        return Profile(self.name, data, self.path)

    def for_provider(self, provider: str | None) -> Profile:
        """This profile with compute seconds timed under ``provider`` (CrypTen's tfp or ttp: who makes the Beaver
        triples changes what a party computes and waits for): entries' ``seconds_by_provider[provider]``
        replace their ``seconds``. None, the provider the ``seconds`` were timed under (``compute_provider``),
        or a profile timed under one provider only: the profile itself."""
        if provider is None or provider == self.data.get("compute_provider"):
            return self
        ops = {name: {**entry, **entry["seconds_by_provider"][provider]}
               if provider in entry.get("seconds_by_provider", {}) else entry for name, entry in self.ops.items()}
        return Profile(self.name, {**self.data, "ops": ops, "compute_provider": provider}, self.path)

    def cost(self, kind: str, features: dict[str, float]) -> ProtocolCost:
        """Rounds, bytes, compute seconds (and messages, where measured) of one op of ``kind`` with these features."""
        entry = self.ops[kind]
        seconds, (messages, refills) = _points_or_form(entry, "seconds", features), _messages(entry, features)
        if "by_length" in entry:
            return replace(_cost_by_length(entry, features), seconds=seconds, messages=messages, refill_messages=refills)
        rounds = _linear_form(entry.get("rounds", {}), features)
        if "bytes_points" in entry:
            points = entry["bytes_points"]
            nbytes, outside = bytes_at(points["points"], float(features.get(points["feature"], 0.0)))
            return ProtocolCost(int(round(rounds)), nbytes, seconds, outside, messages, refills)
        return ProtocolCost(int(round(rounds)), _linear_form(entry.get("bytes", {}), features), seconds,
                            messages=messages, refill_messages=refills)


def _points_or_form(entry: dict, name: str, features: dict[str, float]) -> float:
    """``entry[name + "_points"]`` interpolated (``bytes_at``) where present, else the linear form ``entry[name]``."""
    points = entry.get(f"{name}_points")
    if points:
        return bytes_at(points["points"], float(features.get(points["feature"], 0.0)))[0]
    return _linear_form(entry.get(name, {}), features)


def _messages(entry: dict, features: dict[str, float]) -> tuple[float | None, float]:
    """(messages of one call, the refills' share of them): refill-free (``messages``, a line that may use
    ``log2_length``, or ``messages_points``) plus ``messages_refills.per_element`` x elements, the silent-OT
    refills' expected share. (None, 0): the entry counts no messages (its rounds are its messages)."""
    if "messages_points" not in entry and "messages" not in entry:
        return None, 0.0
    length = max(float(features.get("length", 1.0)), 1.0)
    counted = _points_or_form(entry, "messages", {**features, "log2_length": math.log2(length)})
    refills = float(entry.get("messages_refills", {}).get("per_element", 0.0)) * float(features.get("elements", 0.0))
    return counted + refills, refills


def _linear_form(coefficients: dict[str, float], features: dict[str, float]) -> float:
    return sum(float(c) * float(features.get(name, 0.0)) for name, c in coefficients.items())


def bytes_at(points: list[list[float]], x: float) -> tuple[float, bool]:
    """(bytes at ``x``, whether ``x`` lies outside the measured range) from measured [x, bytes] points.

    Between two points: the line through them. Beyond the last: the last segment's line (large sizes
    grow linearly, in whole ciphertexts on average). Below the first: the first segment's line where it
    meets x = 0 at a cost of its own (a per-call cost: cheetah's softmax costs ~10 MB at 18 elements, as
    a decode step's attention row measures, and at 128), else the first point scaled by x / x0; 0 at x = 0.
    """
    if x <= 0:
        return 0.0, False
    xs = [float(p[0]) for p in points]
    if x < xs[0]:
        if len(points) > 1:
            (x0, y0), (x1, y1) = points[0], points[1]
            slope = (float(y1) - float(y0)) / (float(x1) - float(x0))
            if 0.0 <= slope and float(y0) - slope * float(x0) >= 0.0:
                return float(y0) + slope * (x - float(x0)), True
        return float(points[0][1]) * x / xs[0], True
    if len(points) == 1:
        return float(points[0][1]) * x / xs[0], x != xs[0]
    index = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    (x0, y0), (x1, y1) = points[index - 1], points[index]
    value = float(y0) + (float(y1) - float(y0)) * (x - float(x0)) / (float(x1) - float(x0))
    return max(value, 0.0), x > xs[-1]


def _cost_by_length(entry: dict, features: dict[str, float]) -> ProtocolCost:
    if "log_reduction" in entry:  # the max's own shape at this length: exact between measured lengths
        model, shape = entry["log_reduction"], log_reduction.features(int(features.get("length", 1)),
                                                                      float(features.get("rows", 0)))
        return ProtocolCost(int(round(_linear_form(model["rounds"], shape))), _linear_form(model["bytes"], shape), 0.0)
    # Measured per reduced length L; between two measured lengths interpolate in log L (CrypTen's max
    # takes int(ln L) halving steps), beyond them extrapolate from the last two, flagged approximate.
    table = {int(k): v for k, v in entry["by_length"].items()}
    lengths = sorted(table)
    length = int(features.get("length", 1))
    rows = float(features.get("rows", 0))
    seconds = 0.0  # filled in by ``Profile.cost``
    if length in table:
        row = table[length]
        return ProtocolCost(int(row["rounds"]), row["bytes_per_row"] * rows, seconds)
    if len(lengths) == 1:
        row = table[lengths[0]]
        return ProtocolCost(int(row["rounds"]), row["bytes_per_row"] * rows * length / lengths[0], seconds, True)
    index = min(max(bisect.bisect_left(lengths, length), 1), len(lengths) - 1)
    lo, hi = lengths[index - 1], lengths[index]
    t = (math.log(length) - math.log(lo)) / (math.log(hi) - math.log(lo))
    rounds = table[lo]["rounds"] + t * (table[hi]["rounds"] - table[lo]["rounds"])
    # bytes per row grow about linearly with L: interpolate bytes per element, not per row
    per_elem_lo, per_elem_hi = table[lo]["bytes_per_row"] / lo, table[hi]["bytes_per_row"] / hi
    per_elem = per_elem_lo + t * (per_elem_hi - per_elem_lo)
    return ProtocolCost(int(math.ceil(max(rounds, 0))), max(per_elem, 0) * length * rows, seconds, True)


@lru_cache(maxsize=16)
def _read(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AeroError(f"cannot read protocol profile {path}: {exc}") from None


def load_profile(profile: str | Profile = "crypten") -> Profile:
    """A shipped profile by name (``crypten``, ``bumblebee``) or a profile JSON file by path."""
    if isinstance(profile, Profile):
        return profile
    if profile in PROFILE_NAMES:
        path = DATA_DIR / f"{profile}.json"
    elif os.path.isfile(profile):
        path = Path(profile)
    else:
        raise AeroError(f"unknown protocol '{profile}': use {' or '.join(PROFILE_NAMES)}, or a profile JSON file")
    data = _read(str(path))
    if "ops" not in data:
        raise AeroError(f"{path} is not a protocol profile (it has no 'ops')")
    return Profile(data.get("name", path.stem), data, str(path))
