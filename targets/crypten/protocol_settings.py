"""CrypTen's precision and function settings, as one value a party applies and the analyzer prices.

    settings = ProtocolSettings(precision_bits=20, exp_iterations=10)
    settings.apply(crypten)          # in every party, before crypten.init()
    settings.cost_key()              # "exp10-rec10-sqrt3-log_reduction": the crypten profile variant pricing it

Fixed-point bits change no round and no byte (the ring stays 64-bit), only accuracy; iteration counts
and the max method change both. The profile's top-level entries are CrypTen's defaults; any other
combination is a variant measured by ``aero-compile calibrate crypten --settings KEY``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from aero_compile.errors import AeroError

MAX_METHODS = ("log_reduction", "pairwise", "double_log_reduction")


@dataclass(frozen=True)
class ProtocolSettings:
    """CrypTen 0.4.1's defaults unless changed (``crypten.cfg.encoder`` / ``crypten.cfg.functions``)."""

    precision_bits: int = 16
    exp_iterations: int = 8  # exp(x) = (1 + x / 2^n)^(2^n): n squarings
    reciprocal_iterations: int = 10  # Newton-Raphson steps of 1/x (softmax's denominator, sigmoid)
    inv_sqrt_iterations: int = 3  # Newton-Raphson steps of 1/sqrt(x) (norms)
    max_method: str = "log_reduction"

    def __post_init__(self):
        if not 8 <= self.precision_bits <= 26:
            raise AeroError(f"precision_bits must lie in [8, 26] (products of two values need twice that "
                            f"under a 64-bit ring), got {self.precision_bits}")
        if min(self.exp_iterations, self.reciprocal_iterations, self.inv_sqrt_iterations) < 1:
            raise AeroError("exp, reciprocal and inv_sqrt iterations must be at least 1")
        if self.max_method not in MAX_METHODS:
            raise AeroError(f"unknown max method '{self.max_method}': use one of {', '.join(MAX_METHODS)}")

    def cost_key(self) -> str:
        """The crypten profile variant that prices these settings (precision does not change the cost)."""
        return (f"exp{self.exp_iterations}-rec{self.reciprocal_iterations}-sqrt{self.inv_sqrt_iterations}-"
                f"{self.max_method}")

    @classmethod
    def from_cost_key(cls, key: str, precision_bits: int = 16) -> ProtocolSettings:
        """The settings a cost key names (``exp10-rec10-sqrt3-log_reduction``)."""
        try:
            exp, rec, sqrt, method = key.split("-", 3)
            return cls(precision_bits, int(exp.removeprefix("exp")), int(rec.removeprefix("rec")),
                       int(sqrt.removeprefix("sqrt")), method)
        except ValueError:
            raise AeroError(f"settings '{key}' are not of the form expN-recN-sqrtN-MAXMETHOD "
                            f"(e.g. {DEFAULT_COST_KEY})") from None

    def label(self) -> str:
        return f"{self.precision_bits} bits, {self.cost_key()}"

    def as_dict(self) -> dict:
        return asdict(self)

    def apply(self, crypten) -> None:
        """Set these in ``crypten.cfg`` (in every party, before any value is encoded)."""
        crypten.cfg.encoder.precision_bits = self.precision_bits
        crypten.cfg.functions.exp_iterations = self.exp_iterations
        crypten.cfg.functions.reciprocal_nr_iters = self.reciprocal_iterations
        crypten.cfg.functions.sqrt_nr_iters = self.inv_sqrt_iterations
        crypten.cfg.functions.max_method = self.max_method


DEFAULT_SETTINGS = ProtocolSettings()
DEFAULT_COST_KEY = DEFAULT_SETTINGS.cost_key()

# What --tune-protocol tries, in this order. More exp squarings first: (1 + x/2^n)^(2^n) is coarse for
# the large negative scores of trained attention; their repeated squaring needs more fixed-point bits,
# which are free in rounds and bytes but raise the chance that a product's local truncation wraps
# (about |x| 2^(2 bits) / 2^63 per element), so bits grow slowly; then more Newton steps.
CANDIDATES = (
    DEFAULT_SETTINGS,
    ProtocolSettings(exp_iterations=10),
    ProtocolSettings(precision_bits=18, exp_iterations=10),
    ProtocolSettings(precision_bits=18, exp_iterations=12, reciprocal_iterations=12),
    ProtocolSettings(precision_bits=20, exp_iterations=12, reciprocal_iterations=12, inv_sqrt_iterations=5),
)
