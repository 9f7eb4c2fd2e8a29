"""``aero-compile calibrate crypten --compute``: seconds per op form on this CPU, added to the crypten profile.

    aero-compile calibrate crypten --compute            # adds "seconds" to aero_compile/cost/data/crypten.json
    aero-compile calibrate crypten --compute -o my.json --repetitions 7

Every form that calibrates an entry (``calibration_forms.FORMS``) is lowered by the backend's own dispatch
(the program ``--run-private`` runs for that node) and run between CrypTen parties started as a private
run starts them (``link_timing``: one torch thread each, our links on loopback), under each provider
(``tfp``; ``ttp`` with its dealer process), at sizes near those of the models we run (hundreds to ~16K
elements; products up to ~4M multiply-accumulates), ``repetitions`` times on the same shares; the median
is fitted, per entry and provider, as a non-negative linear form in the features that explain its time
(``private.calibration.fit_seconds``). The default provider's figures are the entries' ``seconds``; the
others' are ``seconds_by_provider[provider]`` (``Profile.for_provider``). Rounds and bytes are not
touched. Loopback's own per-round cost (the dealer's round trips, under ttp) is inside these seconds:
the latency model adds only the link's delay.
"""

from __future__ import annotations

import time
from pathlib import Path

from aero_compile.cost.latency import keep_measured_delays
from aero_compile.errors import AeroError
from aero_compile.targets.private.calibration import fit_seconds, machine

from .calibration_forms import ALIASES, FORMS, MASKED_PRODUCT, NORM, PRODUCT

# (rows, length, width): elementwise and norm forms from 128 to 16,384 elements
SIZES = ((4, 32, 0), (8, 64, 0), (32, 128, 0), (64, 256, 0))
# matrix products [rows, length] @ [length, width]: attention-like, projection-like and an LM head
PRODUCT_SIZES = ((8, 64, 64), (32, 64, 256), (32, 128, 128), (64, 256, 256))
# softmax, log_softmax, max: (rows, reduced length), the attention scores of 1-4 heads at T = 16..128
LENGTH_SIZES = ((16, 16, 0), (64, 32, 0), (128, 64, 0), (128, 128, 0))
DEFAULT_REPETITIONS = 5
PROVIDERS = ("tfp", "ttp")  # the first is the profile's own (``seconds``): what --run-private uses by default


def seconds_features(name: str) -> tuple[str, ...]:
    """The features a form's compute time is fitted on: a per-call constant (its rounds over loopback) plus
    the work that grows with size."""
    form = FORMS[name]
    if name == "matmul":
        return ("calls", "macs", "operand_elements")
    if form.bytes_by == MASKED_PRODUCT:
        return ("calls", "macs", "activation_elements")
    if form.bytes_by == PRODUCT:
        return ("calls", "operand_elements")
    if form.bytes_by == NORM:
        return ("calls", "elements", "rows")
    if name == "local/view":
        return ("calls",)
    return ("calls", "elements")


def timing_plan(forms: list[str]) -> list[tuple[str, int, int, int]]:
    """The (form, rows, length, width) cases timed."""
    cases = []
    for name in forms:
        form = FORMS[name]
        if form.by_length:
            sizes = LENGTH_SIZES
        elif form.bytes_by in (PRODUCT, MASKED_PRODUCT) and name != "mul":
            sizes = PRODUCT_SIZES
        else:
            sizes = SIZES
        cases += [(name, rows, length, width) for rows, length, width in sizes]
    return cases


FORM_TIMEOUT_S = 240.0


def measure_bounded(cases: list[tuple], repetitions: int, timeout_s: float, provider: str = PROVIDERS[0]) -> list[dict] | None:
    """``link_timing.measure_like_a_run`` in a fresh interpreter (``python -m ...compute_timing``); None if it
    has not finished within ``timeout_s`` (CrypTen 0.4.1's parties could stall on a loaded machine;
    the other forms are still measured)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="aero-timing-", suffix=".json") as handle:
        command = [sys.executable, "-m", "aero_compile.targets.crypten.compute_timing", handle.name,
                   str(repetitions), json.dumps(cases), provider]
        # its own session: on a timeout the whole group (it and the parties it started) is ended
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            code = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return None
        finally:
            try:
                os.killpg(child.pid, signal.SIGKILL)  # parties left behind by a failed run
            except ProcessLookupError:
                pass
        return json.loads(Path(handle.name).read_text()) if code == 0 else None


def timed_forms() -> list[str]:
    """Forms that calibrate their own entry (the checks, priced by other entries, are not timed)."""
    from .calibrate import analyzer_steps

    return [name for name in FORMS if [s.entry for s in analyzer_steps(name, 2, 8, 10)] == [name]]


def still_in_force(runs: list[dict], retimed: list[str]) -> list[dict]:
    """The earlier timing runs (oldest first) that still time some form: a run every form of which a later run
    (or this one, ``retimed``) timed again is gone."""
    covered, kept = set(retimed), []
    for run in reversed(runs):
        forms = set(run.get("forms") or [None])  # a run that does not list its forms is kept
        if forms - covered:
            kept.append(run)
        covered |= forms - {None}
    return kept[::-1]


def latency_section(dealer: dict | None = None) -> dict:
    """The crypten profile's network term (``cost/latency.py``): what one counted round waits on a link."""
    section = {
        "counts": "rounds",
        "one_way_delays_per_round": 1.0,
        "note": "a counted round is one communicator call, almost always an all_reduce (opening a Beaver product's "
                "masked operands, a share conversion); LinkCommunicator's all_reduce sends this party's share, then "
                "reads the peer's, both parties at once: 1 one-way delay per round. From the mechanism; "
                "benchmarks/link_delays.py measures it under emulated links (latency.measured)",
        "compute": "entries' seconds (source.compute): measured between two parties over loopback, so loopback's own "
                   "per-round cost is inside; the link adds its delay and transfer time only",
    }
    if dealer:
        section["dealer"] = dealer
    return section


def calibrate_compute(profile: dict, command: str, repetitions: int = DEFAULT_REPETITIONS,
                      forms: list[str] | None = None) -> dict:
    """``profile`` (a crypten profile dict) with each timed entry's ``seconds`` measured now; the source says how."""
    if repetitions < 3:
        raise AeroError(f"--repetitions must be at least 3 (a median of fewer is one run), got {repetitions}")
    known = timed_forms()
    unknown = [name for name in forms or [] if name not in known]
    if unknown:
        raise AeroError(f"--forms: {', '.join(unknown)} cannot be timed (forms: {', '.join(known)})")
    forms = forms or known
    started_at = machine()
    started = time.perf_counter()
    results, hung = {provider: [] for provider in PROVIDERS}, []
    for name in forms:  # one form at a time, each bounded: a CrypTen program that stalls must not stall the rest
        for provider in PROVIDERS:
            timed = measure_bounded(timing_plan([name]), repetitions, FORM_TIMEOUT_S, provider)
            if timed is None:
                hung.append(name)
                break
            results[provider] += [dict(r, provider=provider) for r in timed if r["form"] == name]
    forms = [name for name in forms if name not in hung]
    ops = profile["ops"]
    for name in forms:
        if name not in ops and FORMS[name].compute_only:
            ops[name] = {"rounds": {}, "bytes": {}, "note": "local on the shares: compute only (timed)"}
        if name not in ops:
            raise AeroError(f"the profile has no '{name}' entry to add seconds to: run `aero-compile calibrate crypten` first")
        default, *others = PROVIDERS
        ops[name].update(fit_seconds([r for r in results[default] if r["form"] == name], seconds_features(name)))
        ops[name]["seconds_by_provider"] = {
            provider: fit_seconds([r for r in results[provider] if r["form"] == name], seconds_features(name))
            for provider in others}
    for alias, measured in ALIASES.items():
        if measured in ops and alias in ops:
            ops[alias].update({k: ops[measured][k] for k in ("seconds", "seconds_fit", "seconds_by_provider")
                               if k in ops[measured]})
    earlier = profile["source"].pop("compute", None)
    if earlier:  # other forms timed by an earlier run keep their provenance
        profile["source"]["compute_earlier"] = still_in_force([*profile["source"].get("compute_earlier", []), earlier],
                                                              forms)
    profile["source"]["compute"] = {
        "forms": forms,
        "kind": "measured",
        "how": f"each form run between CrypTen parties started as --run-private starts them (one torch thread each, "
               f"LinkCommunicator over loopback; ttp: with the dealer process), {repetitions} repetitions on the "
               "same shares, median seconds of the client (as a run reports); fitted per entry and provider (non-negative least squares on "
               "relative error, seconds_fit); loopback's per-round cost is inside",
        "providers": {"seconds": PROVIDERS[0], "seconds_by_provider": list(PROVIDERS[1:])},
        "command": command, "repetitions": repetitions, "statistic": "median",
        **started_at, "load_average_1min_at_end": machine()["load_average_1min"],
        "seconds": round(time.perf_counter() - started, 1),
        "settings": "the default variant's; variants measured under other settings reuse these seconds",
        "not_timed": {name: f"its parties stalled (no progress in {FORM_TIMEOUT_S:.0f} s): no compute figure"
                      for name in hung},
    }
    previous = profile.get("latency", {})
    profile["latency"] = keep_measured_delays(latency_section(previous.get("dealer")), previous)
    profile["compute_provider"] = PROVIDERS[0]
    timed = [r for provider in PROVIDERS for r in results[provider]]
    profile["timing_measurements"] = [r for r in profile.get("timing_measurements", []) if r["form"] not in forms] + timed
    return profile


if __name__ == "__main__":  # one bounded measurement (``measure_bounded``): OUTPUT REPETITIONS CASES-JSON PROVIDER
    import json
    import sys

    from .calibrate import with_analyzer_steps
    from .link_timing import measure_like_a_run

    _cases = [tuple(case) for case in json.loads(sys.argv[3])]
    _timed = measure_like_a_run(_cases, repetitions=int(sys.argv[2]), provider=sys.argv[4])
    Path(sys.argv[1]).write_text(json.dumps(with_analyzer_steps(_timed)))
