"""Typed pass options: what ``name{key=value}`` may say, checked when the pipeline is parsed.

A pass declares its options with ``register_pass(..., options={"last": Option(int, min=0, limit="layers")})``
(a bare type is short for ``Option(type)``). The pass manager checks every option of a pipeline before
any model is loaded (type, range, choices) and once more against the model before the first pass runs
(``limit``: a bound only the model knows, such as its number of layers). Errors are one line that names
the pass, the option and its allowed values:

    pass 'gelu-to-identity': relu must be true or false, not 'maybe'
    pass 'prune-ffn': last must be an integer in [0, 2] (the model has 2 layers), not 100
"""

from __future__ import annotations

from dataclasses import dataclass
from .errors import AeroError

_TYPE_NAMES = {int: "integer", float: "number", str: "word"}

# Bounds shared by the calibrating passes (and --calibrate): a calibration past them is a typo, not a
# choice (hours of forward runs; lengths are capped by the model's context anyway).
MAX_CALIBRATION_SEQUENCES = 1024
MAX_CALIBRATION_LENGTH = 4096


@dataclass(frozen=True)
class Option:
    """One keyword option of a pass: its type and the values it allows."""

    type: type = str  # bool, int, float or str
    choices: tuple = ()  # the allowed values (str options)
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # the minimum itself is excluded: (min, max]
    nonzero: bool = False
    what: str = ""  # what a value names, for a refused choice ("calibration source")
    limit: str | None = None  # an upper bound the model sets, checked before the first pass ("layers")
    unit: str = ""  # what the number counts, shown after its range ("nats")

    def describe(self, upper: float | None = None) -> str:
        """The allowed values in words: "an integer >= 0", "one of length, sum", "a number in (0, 1]"."""
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        name = _TYPE_NAMES.get(self.type, self.type.__name__)
        text = f"a non-zero {name}" if self.nonzero else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
        high = self.max if upper is None else (upper if self.max is None else min(self.max, upper))
        if self.min is not None and high is not None:
            text += f" in {'(' if self.min_open else '['}{_number(self.min)}, {_number(high)}]"
        elif self.min is not None:
            text += f" {'>' if self.min_open else '>='} {_number(self.min)}"
        elif high is not None:
            text += f" <= {_number(high)}"
        if self.unit:
            text += f" {self.unit}"
        if self.limit and upper is None:
            text += f", at most the model's {self.limit}"
        return text

    def check(self, pass_name: str, key: str, value, upper: float | None = None, why: str = ""):
        """``value`` converted to the option's type; a one-line AeroError when it is not allowed."""
        if value is None:
            return None  # the pass's own default
        converted = _convert(self.type, value)
        if converted is None or (self.choices and converted not in self.choices):
            if self.choices and self.what:
                raise AeroError(f"pass '{pass_name}': unknown {self.what} '{value}': {key} must be {self.describe()}")
            raise AeroError(f"pass '{pass_name}': {key} must be {self.describe()}, not {_shown(value)}")
        if self.nonzero and converted == 0:
            raise AeroError(f"pass '{pass_name}': {key} must be non-zero, not {_shown(value)}")
        high = self.max if upper is None else (upper if self.max is None else min(self.max, upper))
        low_ok = self.min is None or (converted > self.min if self.min_open else converted >= self.min)
        if self.type in (int, float) and (not low_ok or (high is not None and converted > high)):
            reason = f" ({why})" if why and upper is not None else ""
            raise AeroError(f"pass '{pass_name}': {key} must be {self.describe(upper)}{reason}, not {_shown(value)}")
        return converted


def _convert(kind: type, value):
    """The value as ``kind``, or None when it is not one (True is no integer, 'maybe' no boolean)."""
    if kind is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind is int:
        return value if isinstance(value, int) else None
    if kind is float:
        return float(value) if isinstance(value, (int, float)) else None
    if kind is str:
        return value if isinstance(value, str) else None
    return value if isinstance(value, kind) else None


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def option_schema(options) -> dict[str, Option | None]:
    """Normalize ``register_pass``'s ``options``: names (untyped), or name -> type | Option."""
    if isinstance(options, dict):
        return {name: spec if isinstance(spec, Option) or spec is None else Option(spec)
                for name, spec in options.items()}
    return {name: None for name in options}


def check_options(pass_name: str, schema: dict[str, Option | None], options: dict,
                  limits: dict[str, tuple[float, str]] | None = None) -> dict:
    """``options`` checked against ``schema`` (and against the model's ``limits``: name -> (bound, why))."""
    unknown = sorted(set(options) - set(schema))
    if unknown:
        known = ", ".join(schema) or "none"
        raise AeroError(f"pass '{pass_name}' has no option(s) {unknown}: its options are {known}")
    checked = {}
    for key, value in options.items():
        spec = schema[key]
        if spec is None:
            checked[key] = value
            continue
        upper, why = (limits or {}).get(spec.limit, (None, "")) if spec.limit else (None, "")
        checked[key] = spec.check(pass_name, key, value, upper, why)
    return checked

