"""``--tune-protocol``: the cheapest CrypTen settings whose private logits agree with plaintext.

    aero-compile MODEL --passes all --run-private --tune-protocol --private-seq-len 128

Each candidate of ``protocol_settings.CANDIDATES`` (fixed-point bits, exp / reciprocal / inv_sqrt
iterations, max method) is priced by the cost analyzer (the crypten profile's variant for those
settings: per query, the graph after the passes) and run privately, before and after the passes, on
the calibration batch (the run's token ids). The pick is the cheapest whose argmax agreement over
*all* positions reaches the target on every graph; its run is the report's ``measured``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aero_compile.errors import AeroError
from aero_compile.records import to_json

from .protocol_settings import CANDIDATES, ProtocolSettings
from .runner import run_private

ACCURACY_TARGET = 0.99


@dataclass
class Candidate:
    """One setting tried: what the analyzer predicts per query (after the passes) and what the run agreed."""

    settings: dict
    cost_key: str
    predicted_rounds: int
    predicted_bytes: int
    predicted_latency_s: float
    argmax_agreement: dict[str, float]
    max_abs_error: dict[str, float]
    meets_target: bool
    measured: dict = field(default_factory=dict, repr=False)


def _predict(gm, settings: ProtocolSettings, seq_len: int, network: str, weight_masks: str):
    from aero_compile.cost import analyze

    return analyze(gm, profile="crypten", network=network, seq_len=seq_len, batch=1, weight_masks=weight_masks,
                   protocol_settings=settings.cost_key())


def tune(graphs: dict, *, seq_len: int, provider: str = "tfp", timeout_s: float = 120.0,
         weight_masks: str = "per-model", network: str = "lan", target: float = ACCURACY_TARGET,
         candidates=CANDIDATES) -> tuple[Candidate | None, list[Candidate]]:
    """Try every candidate; return (the cheapest meeting ``target`` on every graph or None, all of them)."""
    last = list(graphs)[-1]  # the graph the cost is for: after the passes
    # every candidate priced first: one the profile was never measured under fails before any run
    costs = [_predict(graphs[last], settings, seq_len, network, weight_masks) for settings in candidates]
    tried = []
    for settings, predicted in zip(candidates, costs):
        measured = run_private(graphs, seq_len=seq_len, provider=provider, timeout_s=timeout_s,
                               weight_masks=weight_masks, settings=settings)
        agreement = {name: m["argmax_agreement"] for name, m in measured.items()}
        tried.append(Candidate(settings.as_dict(), settings.cost_key(), int(predicted.rounds), int(predicted.bytes),
                               float(predicted.latency_s), agreement,
                               {name: m["max_abs_error"] for name, m in measured.items()},
                               min(agreement.values()) >= target, measured))
    passing = [c for c in tried if c.meets_target]
    chosen = min(passing, key=lambda c: (c.predicted_latency_s, c.predicted_bytes)) if passing else None
    return chosen, tried


def tuning_record(chosen: Candidate | None, tried: list[Candidate], target: float, seq_len: int) -> dict:
    """The JSON report's ``protocol_tuning``."""
    candidates = [{k: v for k, v in to_json(c).items() if k != "measured"} for c in tried]
    return {"target_argmax_agreement": target, "seq_len": seq_len, "cost": "per query, after the passes",
            "chosen": chosen.cost_key if chosen else None,
            "chosen_settings": chosen.settings if chosen else None, "candidates": candidates}


def print_tuning(chosen: Candidate | None, tried: list[Candidate], target: float, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from aero_compile.cost.report import format_bytes, format_seconds

    if console is None:
        probe = Console()
        console = probe if probe.is_terminal else Console(width=120)  # logs and pipes: no wrapped cells
    table = Table(title=f"--tune-protocol: CrypTen settings tried (argmax agreement target {target:.0%})")
    for column in ("bits", "exp", "recip", "inv_sqrt", "max", "rounds", "bytes", "latency", "agreement", ""):
        table.add_column(column, justify="left" if column in ("max", "") else "right")
    for c in tried:
        s = c.settings
        table.add_row(str(s["precision_bits"]), str(s["exp_iterations"]), str(s["reciprocal_iterations"]),
                      str(s["inv_sqrt_iterations"]), s["max_method"], f"{c.predicted_rounds:,}",
                      format_bytes(c.predicted_bytes), format_seconds(c.predicted_latency_s),
                      " / ".join(f"{a:.1%}" for a in c.argmax_agreement.values()),
                      "chosen" if c is chosen else ("" if c.meets_target else "below target"))
    console.print(table)
    console.print("cost: the analyzer's prediction per query for the graph after the passes; agreement: "
                  "private vs plaintext argmax over all positions, " + " / ".join(tried[0].argmax_agreement))
    if chosen is None:
        raise AeroError(f"no candidate setting reached {target:.0%} argmax agreement on every graph; the best was "
                        f"{max(min(c.argmax_agreement.values()) for c in tried):.1%}")
