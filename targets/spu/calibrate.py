"""``aero-compile calibrate spu``: SPU measures its own lowerings under cheetah and writes the spu-cheetah profile.

    aero-compile calibrate spu                       # rewrites aero_compile/cost/data/spu-cheetah.json
    aero-compile calibrate spu -o my.json
    aero-compile calibrate spu --update aero_compile/cost/data/spu-cheetah.json --compute   # compute seconds

Rounds, bytes and messages come from the simulator runs below. Compute seconds (``--compute``) do not:
the simulator's timings misled the latency model, so ``process_timing.py`` times the same forms between
two party processes over brpc, as a private run does.

Each op form of ``targets/crypten/calibration_forms.py`` (the one-node graphs the analyzer prices) is
built at several sizes, lowered by this backend's ``dispatch.lower_node`` (the code ``--run-private
--engine spu`` runs) and run in one simulator session after the warm-up; every measurement records
SPU's profiler counters (model owner's send + recv bytes, messages sent) and the analyzer's steps and
features for that node.

Cheetah's cost per element is not a line (measured first): an elementwise product below 16,384 elements
spends Beaver triples from a cache that is refilled by one HE batch of 4096+ triples when it runs dry,
larger ones run HE directly, per 8192-slot ciphertext; OT-based steps (comparisons, truncations) draw on a
silent-OT pool refilled ~2,200 messages at a time. One run of a small op therefore costs either a fraction
or a multiple of its share. So each size is run ``repeats`` times back to back (until ~16K elements were
processed) and priced by the mean, refills included: the expected cost of that op inside a model. Elementwise
and normalization entries keep those means as points (``bytes_points``, interpolated by the analyzer);
matrix products are fitted per ciphertext each way (``cost/cheetah_packing.py``), on shapes from one
ciphertext to dozens. Rounds (messages) are the median per call over runs without a refill. The latency
model's messages (``message_fit.py``) are a refill-free line per form plus the refills per element, pooled
over all recorded runs; ``--messages`` adds the norms' runs at short reduced lengths (``MESSAGE_SIZES``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from aero_compile.cost.profiles import DATA_DIR
from aero_compile.errors import AeroError, describe
from aero_compile.fileio import write_json_atomic
from aero_compile.targets.private.calibration import fit_seconds

from .calibration_forms import (ALIASES, CHECKS, EXTRA_FORMS, FEATURES, MATMUL_SIZES, MATRIX, MATRIX_SECONDS, MAX_REPEATS,
                                MESSAGE_FORMS, MESSAGE_REPEATS, MESSAGE_SIZES, NORM, REFILL_MESSAGES, REPEAT_ELEMENTS, SIZES, _is_matrix, form_program)
from .message_fit import ELEMENTWISE_MESSAGES, MATRIX_MESSAGES, NORM_MESSAGES, fit_messages
from .config import FRACTION_BITS, versions

def repeats_for(rows: int, length: int) -> int:
    """Back-to-back runs of one size: enough that cache and OT-pool refills average out."""
    return min(MAX_REPEATS, max(1, -(-REPEAT_ELEMENTS // (rows * length))))


def measure(forms: list[str], sizes=SIZES, protocol: str = "cheetah", matmul_sizes=MATMUL_SIZES,
            repeats: int | None = None) -> list[dict]:
    """Every form at every size (matrix products at ``matmul_sizes``), each size ``repeats_for`` times back to
    back, in one simulator session; one record per size: the mean bytes and every run's figures.

    An elementwise or norm size first runs once unrecorded: its first run finds the triple cache as the previous
    size left it (a 4096-element mul after 128-element ones paid 2.49 MB where each later run paid one 1.29 MB
    refill), so the recorded runs, REPEAT_ELEMENTS in all, pay the refills per element a model pays."""
    from .lowering import compile_cached
    from .simulator import simulate

    cases, executables, inputs = [], [], []
    for name in forms:
        matrix = _is_matrix(name)
        for rows, length, width in (matmul_sizes if matrix else sizes):
            function, arrays, steps = form_program(name, rows, length, width)
            executable = compile_cached(function, [a.shape for a in arrays], [f"x{i}" for i in range(len(arrays))])
            runs = repeats or (1 if matrix else repeats_for(rows, length))
            settle = 0 if matrix else 1
            executables += [executable] * (settle + runs)
            inputs += [arrays] * (settle + runs)
            cases.append({"form": name, "rows": rows, "length": length, "width": width, "steps": steps,
                          "repeats": runs, "unrecorded_first_runs": settle})
    _, profiles = simulate(executables, inputs, protocol)
    runs = iter(profiles[1:])
    for case in cases:
        for _ in range(case.pop("unrecorded_first_runs")):
            next(runs)
        own = [next(runs) for _ in range(case["repeats"])]
        case.update(bytes=round(float(np.mean([r["bytes"] for r in own]))), runs_bytes=[r["bytes"] for r in own],
                    runs_rounds=[r["rounds"] for r in own], seconds=round(float(np.mean([r["seconds"] for r in own])), 4),
                    runs_seconds=[round(r["seconds"], 4) for r in own],
                    rounds=int(np.median([r["rounds"] for r in own])))
    return cases


def measure_messages(command: str, forms=MESSAGE_FORMS, sizes=MESSAGE_SIZES, protocol: str = "cheetah") -> list[dict]:
    """Messages of the norm forms at short reduced lengths (8 to 32, a GPT-2's attention rows at small T), 3 runs
    back to back each in the simulator (SPU's counters there equal a two-process run's). Their bytes are not
    used: the bytes entries keep the calibration sizes."""
    from aero_compile.targets.private.calibration import machine

    where = machine()
    results = measure(forms, sizes, protocol, repeats=MESSAGE_REPEATS)
    where["load_average_1min_at_end"] = machine()["load_average_1min"]
    for result in results:
        result["counted_in"] = {"mode": "simulator", **where, "command": command}
    return results


def _refill_threshold(results: list[dict]) -> float:
    """Messages above which a run of this form paid a silent-OT refill: the form's median plus a refill's worth."""
    return float(np.median([n for r in results for n in r["runs_rounds"]])) + REFILL_MESSAGES


def _refills(results: list[dict]) -> list[dict]:
    """Runs of one form that paid a silent-OT refill."""
    threshold = _refill_threshold(results)
    return [{"form": r["form"], "rows": r["rows"], "length": r["length"], "rounds": n, "bytes": b}
            for r in results for n, b in zip(r["runs_rounds"], r["runs_bytes"]) if n > threshold]


def _rounds_per_call(results: list[dict]) -> int:
    """Median messages of one call, over the runs without a silent-OT refill."""
    threshold = _refill_threshold(results)
    return int(round(float(np.median([n for r in results for n in r["runs_rounds"] if n <= threshold]))))


def _latency_points(results: list[dict], timed: list[dict] | None = None) -> dict:
    """Compute seconds per call at each measured size (from ``timed``, the compute-only timings, where given):
    the mean of the back-to-back runs, a refill's compute included. Messages: ``_messages``."""
    def elements(r):
        return int(r["steps"][0]["features"]["elements"])

    return {"seconds_points": {"feature": "elements",
                               "points": [[elements(r), r["seconds"]] for r in sorted(timed or results, key=elements)]}}


def _matrix_latency(results: list[dict], timed: list[dict] | None = None) -> dict:
    """A matrix product's compute seconds (from ``timed``, the compute-only timings, where given): a line in
    its HE features and MACs. Messages: ``_messages``."""
    return fit_seconds(timed or results, MATRIX_SECONDS)


def _messages(name: str, recorded: list[dict]) -> dict:
    """Messages of entry ``name`` from every recorded run of its forms (simulator, process timings, the
    message sizes: SPU's counters agree between them), refill-free line plus refills (``message_fit.py``)."""
    own = [r for r in recorded if r["form"] == name or EXTRA_FORMS.get(r["form"], ("",))[0] == name]
    sizes = [{"features": r["steps"][0]["features"], "runs": r["runs_rounds"]} for r in own]
    names = MATRIX_MESSAGES if FEATURES[name] is MATRIX else NORM_MESSAGES if FEATURES[name] is NORM \
        else ELEMENTWISE_MESSAGES
    return fit_messages(sizes, names)


def _points(results: list[dict], timed: list[dict] | None = None) -> dict:
    """The mean bytes per call at each measured size, as the analyzer interpolates them."""
    points = sorted((r["steps"][0]["features"]["elements"], r["bytes"]) for r in results)
    spread = max(max(r["runs_bytes"]) / max(min(r["runs_bytes"]), 1) for r in results)
    return {"rounds": {"calls": _rounds_per_call(results)},
            "bytes_points": {"feature": "elements", "points": [[int(x), int(y)] for x, y in points]},
            **_latency_points(results, timed),
            "fit": {"points": len(points), "repeats": [r["repeats"] for r in results],
                    "largest_run_to_run_ratio": round(spread, 2),
                    "note": "mean of back-to-back runs per size (cache and OT-pool refills included)"}}


def _fit(name: str, features: tuple[str, ...], results: list[dict]) -> dict:
    """Bytes as a least-squares line in ``features`` (matrix products: per ciphertext each way)."""
    rows = [r["steps"][0]["features"] for r in results]
    matrix = np.array([[row.get(f, 0.0) for f in features] for row in rows])
    target = np.array([r["bytes"] for r in results], dtype=float)
    weights = 1.0 / target  # relative errors: small and large sizes count alike
    coefficients, *_ = np.linalg.lstsq(matrix * weights[:, None], target * weights, rcond=None)
    coefficients = np.maximum(coefficients, 0.0)  # a cost is never negative; refit without those that were
    active = [i for i, c in enumerate(coefficients) if c > 0]
    refit, *_ = np.linalg.lstsq(matrix[:, active] * weights[:, None], target * weights, rcond=None)
    coefficients = np.zeros(len(features))
    coefficients[active] = refit
    predicted = matrix @ coefficients
    residual = float(np.max(np.abs(predicted - target) / target))
    return {"rounds": {"calls": _rounds_per_call(results)},
            "bytes": {f: round(float(c), 4) for f, c in zip(features, coefficients) if c > 0},
            "fit": {"features": list(features), "max_relative_residual": round(residual, 4), "points": len(results)}}


def _check(profile_ops: dict, results: list[dict]) -> dict:
    from aero_compile.cost.profiles import Profile

    profile = Profile("spu-cheetah", {"ops": profile_ops})
    worst = 0.0
    for result in results:
        predicted = sum(profile.cost(s["entry"], s["features"]).bytes for s in result["steps"])
        worst = max(worst, abs(predicted - result["bytes"]) / result["bytes"])
    return {"steps": [s["entry"] for s in results[0]["steps"]], "max_relative_error": round(worst, 4),
            "points": len(results)}


def calibrate_spu(command: str, forms=None, sizes=SIZES) -> dict:
    """Measure every form under cheetah and return the spu-cheetah profile (a dict ready for JSON)."""
    started = time.perf_counter()
    forms = list(forms or [*FEATURES, *EXTRA_FORMS, *CHECKS])
    results = measure(forms, sizes)
    return profile_from(results, forms, command, round(time.perf_counter() - started, 1))


def refit(profile: dict, command: str, replaced: list[dict] | None = None, timings: list[dict] | None = None,
          messages: list[dict] | None = None) -> dict:
    """The profile rebuilt from ``profile``'s own measurements, with the analyzer's features as this code
    computes them now (a feature fixed or added needs no new measurement); the source says both.
    ``replaced``: new measurements of some forms, which take the place of the recorded ones of those forms
    (``messages``: the same for the message-only sizes, ``measure_messages``)."""
    new_forms = {r["form"] for r in replaced or []}
    results = [r for r in profile["measurements"] if r["form"] not in new_forms] + list(replaced or [])
    for result in results:
        result["steps"] = form_program(result["form"], result["rows"], result["length"], result["width"])[2]
    forms = list(dict.fromkeys(r["form"] for r in results))
    source = profile["source"]
    timed_forms = {r["form"] for r in timings or []}
    timings = [r for r in profile.get("timing_measurements", []) if r["form"] not in timed_forms] + list(timings or [])
    for result in timings:
        result["steps"] = form_program(result["form"], result["rows"], result["length"], result["width"])[2]
    counted_forms = {r["form"] for r in messages or []}
    messages = [r for r in profile.get("message_measurements", []) if r["form"] not in counted_forms] + list(messages or [])
    for result in messages:
        result["steps"] = form_program(result["form"], result["rows"], result["length"], result["width"])[2]
    rebuilt = profile_from(results, forms, source["command"], source["seconds"], timings or None, messages or None)
    rebuilt["source"].update({k: source[k] for k in ("date", "python", "machine", "torch", "spu", "jax") if k in source})
    rebuilt["source"].setdefault("updates", list(source.get("updates", [])))
    if "latency" in profile:
        rebuilt["latency"] = profile["latency"]
    rebuilt["source"]["updates"].append({"command": command, "remeasured_forms": sorted(new_forms),
                                         "timed_forms": sorted(timed_forms), "counted_forms": sorted(counted_forms),
                                         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")})
    return rebuilt


def profile_from(results: list[dict], forms: list[str], command: str, seconds: float,
                 timings: list[dict] | None = None, message_results: list[dict] | None = None) -> dict:
    """The spu-cheetah profile of measured ``results``: entries fitted or tabulated, checks, refills
    (``timings``: compute-only measurements that price the seconds of the forms they cover;
    ``message_results``: runs at more sizes that count messages only, e.g. norms at short lengths)."""
    ops = {}
    recorded = [*results, *(timings or []), *(message_results or [])]
    for name in forms:
        if name in FEATURES:
            own = [r for r in results if r["form"] == name or EXTRA_FORMS.get(r["form"], ("",))[0] == name]
            if any([s["entry"] for s in r["steps"]] != [name] for r in own):
                raise AeroError(f"calibration: the analyzer prices form '{name}' by other entries; check it instead")
            timed = [r for r in timings or [] if r["form"] == name or EXTRA_FORMS.get(r["form"], ("",))[0] == name]
            ops[name] = {**_fit(name, FEATURES[name], own), **_matrix_latency(own, timed or None)} \
                if FEATURES[name] is MATRIX \
                else _points(own, timed or None)
            ops[name].update(_messages(name, recorded))
    for alias, measured in ALIASES.items():
        if measured in ops:
            ops[alias] = ops[measured]
    checks = {name: _check(ops, [r for r in results if r["form"] == name]) for name in forms if name in CHECKS}
    refills = [r for name in forms for r in _refills([m for m in results if m["form"] == name])]
    return {
        "name": "spu-cheetah",
        "source": {
            "kind": "measured",
            "how": "aero-compile calibrate spu: each op form of targets/crypten/calibration_forms.py lowered by "
                   "targets/spu/dispatch.py (the code --engine spu runs), compiled by SPU and run by its simulator "
                   "(2 parties, in-memory link) after a warm-up; counters from SPU's pphlo profiler (model owner)",
            "command": command, **versions(), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
            "seconds": seconds,
            "defaults": f"SPU cheetah, FM64 ring, {FRACTION_BITS} fractional bits, YACL Ferret OT, every input "
                        "secret-shared (the owner's weights too: SPU 0.9.5's cheetah Io has no private inputs)",
        },
        "bytes_counted": "both directions between the two parties (the model owner's send + recv), as the AERO "
                         "paper counts communication",
        "schedule": "sequential",
        "wire_bytes_per_counted_byte": 0.5,
        "rounds_counted": "messages the model owner sends (SPU packs a round into one message per peer; silent-OT "
                          "refills add ~2,200 at points no per-op form can predict)",
        "ops": ops,
        "checks": checks,
        "latency": latency_section(),
        "ot_refills": {"runs": len(refills), "note": "runs that paid a silent-OT refill (their bytes are in the "
                       "means the entries price; their messages are not in the rounds)", "runs_listed": refills},
        "measurements": results,
        **({"timing_measurements": timings} if timings else {}),
        **({"message_measurements": message_results} if message_results else {}),
    }


ONE_WAY_DELAYS_PER_MESSAGE = 2.0


def latency_section() -> dict:
    """The profile's network term (``cost/latency.py``): messages the owner sends, each waiting for the
    client's reply (a one-way delay each way). ``--update --compute`` adds the compute fields
    (``process_timing.calibrate_compute``)."""
    return {
        "counts": "messages",
        "one_way_delays_per_round": ONE_WAY_DELAYS_PER_MESSAGE,
        "note": "counted: the messages the model owner sends (entries' messages: a refill-free line or points, plus "
                "messages_refills.per_element x elements for the silent-OT refills); 2 one-way delays each: cheetah's steps are request/response (HE "
                "products: ciphertexts then the masked result; OT: choice then correction), so an owner message waits "
                "for a client message. Assumed from the protocols' structure, not yet measured under an emulated link",
        "compute": "entries' seconds_points / seconds: mean seconds of the back-to-back runs the calibration recorded "
                   "(SPU's simulator: both parties as threads of one process over an in-memory link); "
                   "`calibrate spu --update PROFILE --compute` times them between two processes instead",
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aero-compile calibrate spu",
                                     description="Measure each op form under SPU cheetah and write the spu-cheetah profile.")
    parser.add_argument("-o", "--output", default=str(DATA_DIR / "spu-cheetah.json"),
                        help="profile JSON to write (default: the shipped spu-cheetah profile)")
    parser.add_argument("--forms", help="comma-separated forms to measure (default: all)")
    parser.add_argument("--compute", action="store_true",
                        help="with --update: time the op forms' compute between two processes over brpc (as "
                             "--run-private --engine spu runs), and the fixed cost of one execution (process_timing.py)")
    parser.add_argument("--compute-forms", metavar="FORMS",
                        help="with --update --compute: time only these forms (default: every form); the others "
                             "keep their recorded seconds; their recorded bytes are kept")
    parser.add_argument("--messages", action="store_true",
                        help="with --update: count the norm forms' messages at short reduced lengths (8 to 32) and "
                             "refit every entry's messages (refill-free line plus silent-OT refills per element)")
    parser.add_argument("--update", metavar="PROFILE",
                        help="rebuild PROFILE's entries from its recorded measurements, re-measuring only --forms "
                             "(none: measure nothing, refit with the analyzer's current features)")
    args = parser.parse_args(argv)
    command = " ".join(["aero-compile", "calibrate", "spu", *argv])
    forms = [f.strip() for f in args.forms.split(",")] if args.forms else None
    known = [*FEATURES, *EXTRA_FORMS, *CHECKS]
    unknown = [f for f in forms or [] if f not in known]
    if unknown:
        raise AeroError(f"unknown form(s) {', '.join(unknown)}: forms are {', '.join(known)}")
    if args.messages and not args.update:
        raise AeroError("--messages counts messages into a profile that has its rounds and bytes: give --update PROFILE "
                        "(e.g. --update aero_compile/cost/data/spu-cheetah.json)")
    if (args.compute or args.compute_forms) and not args.update:
        raise AeroError("--compute times forms into a profile that has its rounds and bytes: give --update PROFILE "
                        "(e.g. --update aero_compile/cost/data/spu-cheetah.json)")
    if args.update:
        try:
            recorded = json.loads(Path(args.update).read_text())
            recorded["measurements"], recorded["source"]  # noqa: B018 (a profile calibrate spu wrote)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise AeroError(f"--update {args.update}: not a spu-cheetah profile with measurements ({describe(error)}); "
                            "give a JSON that aero-compile calibrate spu wrote") from None
        compute_forms = [f.strip() for f in args.compute_forms.split(",")] if args.compute_forms else []
        bad = [f for f in compute_forms if f not in FEATURES and f not in EXTRA_FORMS]
        if bad:
            raise AeroError(f"--compute-forms: {', '.join(bad)} cannot be timed alone (forms: "
                            f"{', '.join([*FEATURES, *EXTRA_FORMS])})")
        if compute_forms and not args.compute:
            raise AeroError("--compute-forms times forms for --compute: give --compute too")
        timings, compute = None, {}
        if args.compute:
            from .process_timing import calibrate_compute

            timings, compute = calibrate_compute(compute_forms or [*FEATURES, *EXTRA_FORMS], command)
        counted = measure_messages(command) if args.messages else None
        profile = refit(recorded, command, measure(forms) if forms else None, timings, counted)
        # the compute fields only: the delay fields (one-way delays per message, counts) stay as recorded
        if compute:
            from .process_timing import merged_compute_source

            compute["compute_source"] = merged_compute_source(profile, compute["compute_source"])
        profile["latency"] = {**profile.get("latency", latency_section()), **compute}
        write_json_atomic(args.output, profile)
        print(f"wrote {args.output}: {len(profile['ops'])} profile entries from {len(profile['measurements'])} "
              f"measured sizes ({', '.join(forms) if forms else 'none'} re-measured)")
        return 0
    profile = calibrate_spu(command, forms)
    write_json_atomic(args.output, profile)
    fitted = [(v["fit"]["max_relative_residual"], k) for k, v in profile["ops"].items() if "max_relative_residual" in v["fit"]]
    worst = f"; worst matrix-product fit residual {max(fitted)[0]:.2%} ({max(fitted)[1]})" if fitted else ""
    print(f"wrote {args.output}: {len(profile['ops'])} profile entries, {len(profile['measurements'])} measured sizes "
          f"in {profile['source']['seconds']} s{worst}")
    return 0
