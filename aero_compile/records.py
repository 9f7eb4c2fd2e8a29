"""Typed records shared by the pipeline report, the cost analyzer and the engines, and their one JSON form.

``to_json(record)`` turns a record (a dataclass, nested in lists and dicts) into JSON-ready values:
its fields in declaration order, under their own names. A field declared with ``optional()`` is
left out while it is None (a report section only some runs have); a field may name a converter for
its JSON value (``metadata={"json": ...}``).

``OpCost`` is the cost of one op kind, one layer or one forward pass, whether the cost analyzer
predicted it or an engine measured it: the same field names on both sides, so the two compare
field by field. ``ratio`` / ``format_ratio`` say how two figures compare, in every before/after table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum


def optional(**metadata):
    """A dataclass field that defaults to None and is left out of the JSON while it is None."""
    return field(default=None, metadata={"optional": True, **metadata})


def to_json(value):
    """The JSON-ready form of a record (see the module docstring); other values pass through."""
    if is_dataclass(value) and not isinstance(value, type):
        out = {}
        for spec in fields(value):
            item = getattr(value, spec.name)
            if item is None and spec.metadata.get("optional"):
                continue
            convert = spec.metadata.get("json")
            out[spec.name] = to_json(convert(item) if convert and item is not None else item)
        return out
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, Enum):
        return value.value
    return value


def ratio(before: float, after: float) -> float | None:
    """How many times ``after`` is below ``before``: 4.0 for 100 -> 25 (None when ``after`` is zero)."""
    return before / after if after else None


def format_ratio(before: float, after: float) -> str:
    """A before/after ratio for a table cell: "=", "4.00x", "removed" (after is 0) or "new" (before is 0)."""
    if before == after:
        return "="
    if not after:
        return "removed"
    return f"{ratio(before, after):.2f}x" if before else "new"


def _whole_bytes(value: float) -> int:
    return int(round(value))


def _sum_optional(a: float | None, b: float | None) -> float | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


@dataclass
class OpCost:
    """Communication and time of one op kind, one layer or a whole forward pass: predicted or measured.

    The cost analyzer fills ``latency_s`` (rounds x RTT + bytes / bandwidth + compute, on its network)
    and ``elements``; an engine's measurement fills ``seconds`` (wall time in the party).
    """

    rounds: int = 0
    bytes: float = field(default=0, metadata={"json": _whole_bytes})
    latency_s: float | None = optional()
    seconds: float | None = optional()
    count: int = 0
    elements: int | None = optional()  # scalars the ops transform

    def add(self, other: OpCost) -> None:
        """Accumulate ``other`` into this total."""
        self.rounds += other.rounds
        self.bytes += other.bytes
        self.latency_s = _sum_optional(self.latency_s, other.latency_s)
        self.seconds = _sum_optional(self.seconds, other.seconds)
        self.count += other.count
        self.elements = _sum_optional(self.elements, other.elements)
