"""``aero-compile calibrate spu``: SPU measures its own lowerings under cheetah and writes the spu-cheetah profile.

    aero-compile calibrate spu                       # rewrites aero_compile/cost/data/spu-cheetah.json
    aero-compile calibrate spu -o my.json

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
ciphertext to dozens. Rounds (messages) are the median per call over runs without a refill.
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
import torch.fx as fx

from aero_compile.cost.latency import keep_measured_delays
from aero_compile.cost.profiles import DATA_DIR
from aero_compile.errors import AeroError, describe
from aero_compile.fileio import write_json_atomic
from aero_compile.secrecy import propagate_secrecy
from aero_compile.targets.private.calibration import fit_linear, fit_seconds, form_shapes
from aero_compile.targets.private.graph import owner_shares

from .config import FRACTION_BITS, versions
from .dispatch import lower_node

# (rows, length, width): elements rows x length from 128 to 32,768: one ciphertext, its bound, the switch
# from cached triples to direct HE at 16,384, and beyond
SIZES = ((2, 64, 64), (8, 128, 32), (32, 128, 32), (64, 128, 16), (128, 128, 16), (256, 128, 16))
# matrix products from one ciphertext each way to dozens, sent-heavy and response-heavy (he_* features)
# (the first three come back unpacked: one result block)
MATMUL_SIZES = ((2, 64, 64), (8, 32, 32), (32, 16, 16), (4, 64, 64), (16, 128, 32), (128, 64, 1024), (128, 1024, 64),
                (128, 512, 512), (64, 256, 256))
# compute-only timings (--compute-forms): 1,024 to 8,192 elements, a few runs each
TIMING_SIZES = ((8, 128, 32), (32, 128, 32), (64, 128, 16))
TIMING_REPEATS = 3
REPEAT_ELEMENTS = 16384  # run a size until this many elements were processed (16 runs at most)
MAX_REPEATS = 16
REFILL_MESSAGES = 1000  # a run with this many more messages than its form's median paid a silent-OT refill
ELEMENTWISE = ("calls", "ciphertexts", "elements")
PRODUCT = ("calls", "io_elements", "operand_elements")
# per ciphertext each way, plus a constant per matrix (a batched product runs one HE product per matrix:
# measured, 4 heads cost 4x one)
MATRIX = ("matrix_products", "he_sent_ciphertexts", "he_response_ciphertexts", "he_unpacked_responses")
NORM = ("calls", "ciphertexts", "elements", "rows")
FEATURES = {"relu": ELEMENTWISE, "gelu": ELEMENTWISE, "silu": ELEMENTWISE, "softmax": NORM, "log_softmax": NORM,
            "max": NORM, "layernorm": NORM, "rmsnorm": NORM, "exp": ELEMENTWISE, "log": ELEMENTWISE,
            "tanh": ELEMENTWISE, "sigmoid": ELEMENTWISE, "rsqrt": ELEMENTWISE, "reciprocal": ELEMENTWISE,
            "square": ELEMENTWISE, "compare": ELEMENTWISE, "mul": PRODUCT, "matmul": MATRIX}
# Forms of this backend's own, each calibrating the entry the analyzer prices it by (with the form of that name)
EXTRA_FORMS = {"matmul/batched": ("matmul", lambda g: g.call(torch.ops.aten.matmul.default, g.secret((4, g.rows, g.length)),
                                                               g.secret((4, g.length, g.width))))}
CHECKS = ("sqrt", "div", "div/rows", "div/weight")  # priced by the entries above: checked against them
ALIASES = {"linear": "matmul", "embedding": "matmul", "mul/weight": "mul"}


class FormContext:
    """What ``dispatch.lower_node`` reads, for a one-node form: its inputs as the jax function's arguments."""

    def __init__(self, gm: fx.GraphModule, values: dict[fx.Node, object], inverses: dict[fx.Node, object]):
        self.gm, self.token_nodes, self.values, self.inverses = gm, frozenset(), values, inverses

    def value(self, node: fx.Node):
        return self.values[node]

    def owner_inverse(self, node: fx.Node):
        return self.inverses.get(node)

    def inv_sqrt_scale(self, node: fx.Node) -> float:
        return 1.0


def _build(name: str, rows: int, length: int, width: int):
    from aero_compile.targets.crypten.calibrate import build
    from aero_compile.targets.crypten.calibration_forms import FormGraph

    if name not in EXTRA_FORMS:
        return build(name, rows, length, width)
    graph = FormGraph(rows, length, width)
    node = EXTRA_FORMS[name][1](graph)
    return graph.module(node), node, graph.inputs


def _analyzer_steps(gm: fx.GraphModule, node: fx.Node, inputs) -> list:
    from aero_compile.cost.features import protocol_steps
    from aero_compile.ops import classify_graph
    op = next(op for op in classify_graph(gm) if op.output is node)
    return protocol_steps(op, propagate_secrecy(gm), form_shapes(gm, inputs))[2]


def form_program(name: str, rows: int, length: int, width: int):
    """(jax function, input arrays, analyzer steps) of one form at one size: client values and the
    owner's (weights, 1/w) are the function's secret inputs, in that order."""
    gm, node, client_values = _build(name, rows, length, width)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    weights = {n: getattr(gm, str(n.target)).detach() for n in gm.graph.nodes if n.op == "get_attr"}
    owned, inverses = owner_shares(gm, propagate_secrecy(gm), weights)
    owner_nodes, inverse_nodes = list(owned), list(inverses)
    arrays = [v.float().numpy() for v in client_values] + [owned[n].float().numpy() for n in owner_nodes] + \
             [inverses[n].float().numpy() for n in inverse_nodes]

    def function(*inputs):
        count = len(placeholders) + len(owner_nodes)
        values = dict(zip(placeholders + owner_nodes, inputs[:count]))
        return lower_node(FormContext(gm, values, dict(zip(inverse_nodes, inputs[count:]))), node)

    steps = [{"entry": s.entry, "features": s.features} for s in _analyzer_steps(gm, node, client_values)]
    return function, arrays, steps


def _is_matrix(name: str) -> bool:
    return FEATURES.get(EXTRA_FORMS.get(name, (name,))[0]) is MATRIX


def repeats_for(rows: int, length: int) -> int:
    """Back-to-back runs of one size: enough that cache and OT-pool refills average out."""
    return min(MAX_REPEATS, max(1, -(-REPEAT_ELEMENTS // (rows * length))))


def measure(forms: list[str], sizes=SIZES, protocol: str = "cheetah", matmul_sizes=MATMUL_SIZES,
            repeats: int | None = None) -> list[dict]:
    """Every form at every size (matrix products at ``matmul_sizes``), each size ``repeats_for`` times back to
    back, in one simulator session; one record per size: the mean bytes and every run's figures."""
    from .lowering import compile_cached
    from .simulator import simulate

    cases, executables, inputs = [], [], []
    for name in forms:
        matrix = _is_matrix(name)
        for rows, length, width in (matmul_sizes if matrix else sizes):
            function, arrays, steps = form_program(name, rows, length, width)
            executable = compile_cached(function, [a.shape for a in arrays], [f"x{i}" for i in range(len(arrays))])
            runs = repeats or (1 if matrix else repeats_for(rows, length))
            executables += [executable] * runs
            inputs += [arrays] * runs
            cases.append({"form": name, "rows": rows, "length": length, "width": width, "steps": steps,
                          "repeats": runs})
    _, profiles = simulate(executables, inputs, protocol)
    runs = iter(profiles[1:])
    for case in cases:
        own = [next(runs) for _ in range(case["repeats"])]
        case.update(bytes=round(float(np.mean([r["bytes"] for r in own]))), runs_bytes=[r["bytes"] for r in own],
                    runs_rounds=[r["rounds"] for r in own], seconds=round(float(np.mean([r["seconds"] for r in own])), 4),
                    runs_seconds=[round(r["seconds"], 4) for r in own],
                    rounds=int(np.median([r["rounds"] for r in own])))
    return cases


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
    """Compute seconds (from ``timed``, the compute-only timings, where given) and messages (refills included)
    per call at each measured size: the mean of the back-to-back runs, the expected cost of the op inside a
    model (a refill's compute and messages included, as its bytes are)."""
    def elements(r):
        return int(r["steps"][0]["features"]["elements"])

    return {"seconds_points": {"feature": "elements",
                               "points": [[elements(r), r["seconds"]] for r in sorted(timed or results, key=elements)]},
            "messages_points": {"feature": "elements",
                                "points": [[elements(r), round(float(np.mean(r["runs_rounds"])), 2)]
                                           for r in sorted(results, key=elements)]}}


def _matrix_latency(results: list[dict]) -> dict:
    """A matrix product's compute seconds and messages (refills included) as lines in its HE features."""
    rows = [r["steps"][0]["features"] for r in results]
    messages, residual = fit_linear(rows, [float(np.mean(r["runs_rounds"])) for r in results], MATRIX[:3])
    return {**fit_seconds(results, (*MATRIX, "macs")),
            "messages": {f: round(c, 4) for f, c in messages.items()},
            "messages_fit": {"max_relative_residual": round(residual, 4), "points": len(results)}}


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


def refit(profile: dict, command: str, replaced: list[dict] | None = None, timings: list[dict] | None = None) -> dict:
    """The profile rebuilt from ``profile``'s own measurements, with the analyzer's features as this code
    computes them now (a feature fixed or added needs no new measurement); the source says both.
    ``replaced``: new measurements of some forms, which take the place of the recorded ones of those forms."""
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
    rebuilt = profile_from(results, forms, source["command"], source["seconds"], timings or None)
    rebuilt["source"].update({k: source[k] for k in ("date", "python", "machine", "torch", "spu", "jax") if k in source})
    rebuilt["source"].setdefault("updates", list(source.get("updates", [])))
    if "latency" in profile:
        rebuilt["latency"] = profile["latency"]
    rebuilt["source"]["updates"].append({"command": command, "remeasured_forms": sorted(new_forms),
                                         "timed_forms": sorted(timed_forms),
                                         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")})
    return rebuilt


def profile_from(results: list[dict], forms: list[str], command: str, seconds: float,
                 timings: list[dict] | None = None) -> dict:
    """The spu-cheetah profile of measured ``results``: entries fitted or tabulated, checks, refills
    (``timings``: compute-only measurements that price the seconds of the forms they cover)."""
    ops = {}
    for name in forms:
        if name in FEATURES:
            own = [r for r in results if r["form"] == name or EXTRA_FORMS.get(r["form"], ("",))[0] == name]
            if any([s["entry"] for s in r["steps"]] != [name] for r in own):
                raise AeroError(f"calibration: the analyzer prices form '{name}' by other entries; check it instead")
            timed = [r for r in timings or [] if r["form"] == name]
            ops[name] = {**_fit(name, FEATURES[name], own), **_matrix_latency(own)} if FEATURES[name] is MATRIX \
                else _points(own, timed or None)
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
    }


ONE_WAY_DELAYS_PER_MESSAGE = 2.0


def latency_section(measure_link: bool = False) -> dict:
    """The profile's network term (``cost/latency.py``): messages the owner sends, each waiting for the
    client's reply (a one-way delay each way), and with ``measure_link`` the loopback cost of one message."""
    from aero_compile.targets.private.calibration import machine

    section = {
        "counts": "messages",
        "one_way_delays_per_round": ONE_WAY_DELAYS_PER_MESSAGE,
        "note": "counted: the messages the model owner sends (entries' messages_points: the mean of back-to-back runs, "
                "silent-OT refills included); 2 one-way delays each: cheetah's steps are request/response (HE "
                "products: ciphertexts then the masked result; OT: choice then correction), so an owner message waits "
                "for a client message. Assumed from the protocols' structure, not yet measured under an emulated link",
        "compute": "entries' seconds_points / seconds: mean seconds of the back-to-back runs the calibration recorded "
                   "(SPU's simulator: both parties as threads of one process over an in-memory link)",
    }
    if measure_link:
        from .link_timing import one_way_message_seconds

        measured = one_way_message_seconds()
        section["loopback_s_per_message"] = round(measured["seconds"], 7)
        section["loopback_source"] = {"kind": "measured", "how": measured["statistic"], "trials": measured["trials"],
                                      "command": "python -m aero_compile.targets.spu.link_timing", **machine()}
    return section


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aero-compile calibrate spu",
                                     description="Measure each op form under SPU cheetah and write the spu-cheetah profile.")
    parser.add_argument("-o", "--output", default=str(DATA_DIR / "spu-cheetah.json"),
                        help="profile JSON to write (default: the shipped spu-cheetah profile)")
    parser.add_argument("--forms", help="comma-separated forms to measure (default: all)")
    parser.add_argument("--compute", action="store_true",
                        help="with --update: also measure what one message costs over loopback sockets (brpc), which "
                             "the simulator-timed compute lacks (link_timing.py; seconds)")
    parser.add_argument("--compute-forms", metavar="FORMS",
                        help="with --update: time these elementwise/norm forms again (compute only, at small sizes, "
                             f"{TIMING_REPEATS} back-to-back runs each, the mean); their recorded bytes are kept")
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
    if args.update:
        try:
            recorded = json.loads(Path(args.update).read_text())
            recorded["measurements"], recorded["source"]  # noqa: B018 (a profile calibrate spu wrote)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise AeroError(f"--update {args.update}: not a spu-cheetah profile with measurements ({describe(error)}); "
                            "give a JSON that aero-compile calibrate spu wrote") from None
        compute_forms = [f.strip() for f in args.compute_forms.split(",")] if args.compute_forms else []
        bad = [f for f in compute_forms if f not in FEATURES or FEATURES[f] is MATRIX]
        if bad:
            raise AeroError(f"--compute-forms: {', '.join(bad)} cannot be timed alone (elementwise and norm forms: "
                            f"{', '.join(f for f in FEATURES if FEATURES[f] is not MATRIX)})")
        from aero_compile.targets.private.calibration import machine

        started = machine()
        timings = measure(compute_forms, TIMING_SIZES, repeats=TIMING_REPEATS) if compute_forms else None
        profile = refit(recorded, command, measure(forms) if forms else None, timings)
        if args.compute:
            profile["latency"] = keep_measured_delays(latency_section(measure_link=True), profile.get("latency"))
        if timings:
            profile["latency"]["compute_source"] = {
                "kind": "measured", "forms": compute_forms, "command": command, "sizes": [list(s) for s in TIMING_SIZES],
                "how": f"SPU simulator, {TIMING_REPEATS} back-to-back runs per size, mean seconds", **started,
                "load_average_1min_at_end": machine()["load_average_1min"]}
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
