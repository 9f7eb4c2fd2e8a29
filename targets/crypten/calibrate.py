"""``aero-compile calibrate crypten``: the CrypTen backend measures its own lowerings and writes the crypten profile.

    aero-compile calibrate crypten                 # rewrites aero_compile/cost/data/crypten.json
    aero-compile calibrate crypten -o my.json --lengths 16,128,1000

Every form of ``calibration_forms.FORMS`` is built at several sizes, lowered with ``dispatch.lower_node``
and run between two CrypTen parties with communication statistics on (rank 0's counters, as the
analyzer counts bytes). Rounds must not change with size (else the form is measured per length);
bytes are fitted, by least squares, as a linear form in the features that explain them, on the
features the analyzer itself computes for that node; the largest relative residual is recorded
beside the coefficients. Forms priced by other forms' entries are checked against the sum of them.
"""

from __future__ import annotations

import datetime
import platform
import time

import numpy as np
import torch
import torch.fx as fx

from aero_compile.cost import log_reduction
from aero_compile.cost.features import WEIGHT_MASK, Step, local_step, masked_weights, offline_steps, protocol_steps
from aero_compile.cost.profiles import Profile
from aero_compile.errors import AeroError
from aero_compile.ops import classify_graph
from aero_compile.secrecy import propagate_secrecy
from aero_compile.targets.private.calibration import form_shapes, median_seconds

from .calibration_forms import ALIASES, FORMS, FormGraph
from .protocol_settings import DEFAULT_COST_KEY

# Softmax/max lengths: powers of two and lengths between them where CrypTen's log-reduction max changes
# shape (halvings at int(ln L), survivors crossing a power of two): the fit of ``log_reduction`` needs both.
DEFAULT_LENGTHS = (2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17, 20, 24, 32, 33, 48, 64, 65, 100, 128, 129, 200, 256, 300,
                   512, 513, 700, 1000, 1024)
# (rows, length) grid for forms whose rounds do not depend on size; the width of a matmul is 8 + rows.
GRID = ((2, 8), (4, 8), (2, 32), (4, 32), (3, 20))
LOG_REDUCTION_TOLERANCE = 1e-3  # the shape's fit reproduces CrypTen's bytes exactly when it applies
CHECK_TOLERANCE = 0.02  # a checked form's bytes may differ this much from the sum of its steps
OWNER = 0


def plan(lengths=DEFAULT_LENGTHS) -> list[tuple[str, int, int, int]]:
    """The (form, rows, length, width) cases a calibration measures."""
    cases = []
    for form in FORMS.values():
        if form.compute_only:
            continue  # nothing to count: timed by ``compute_timing`` only
        if form.by_length:
            cases += [(form.name, rows, length, 0) for length in lengths for rows in (2, 3)]
        else:
            cases += [(form.name, rows, length, 8 + rows) for rows, length in GRID]
    return cases


def build(name: str, rows: int, length: int, width: int) -> tuple[fx.GraphModule, fx.Node, list[torch.Tensor]]:
    """One form's graph at one size: (module, the form's node, plaintext inputs)."""
    if name not in FORMS:
        raise AeroError(f"unknown calibration form '{name}': forms are {', '.join(FORMS)}")
    graph = FormGraph(rows, length, width)
    node = FORMS[name].build(graph)
    return graph.module(node), node, graph.inputs


def analyzer_steps(name: str, rows: int, length: int, width: int, offline: bool = False) -> list[Step]:
    """How the cost analyzer prices this form's node at this size: its own code, on the same graph
    (``offline``: the once-per-model masking of the weights it reads instead)."""
    gm, node, inputs = build(name, rows, length, width)
    metas = form_shapes(gm, inputs)
    levels = propagate_secrecy(gm)
    op = next(op for op in classify_graph(gm) if op.output is node)
    if offline:
        return offline_steps(masked_weights(op, levels, metas), metas)
    if FORMS[name].compute_only:
        return [local_step(op, levels, metas)]
    priced = protocol_steps(op, levels, metas, FORMS[name].weight_masks)
    if priced is None:
        raise AeroError(f"calibration: the analyzer prices form '{name}' as free; it measures nothing")
    return priced[2]


class FormContext:
    """What ``dispatch.lower_node`` reads of a private graph, for a one-node graph.

    Client inputs are secret-shared; the owner shares what ``PrivateGraph.share`` has it share
    (``lowering.owner_shares``); norms get no inv_sqrt rescaling (a public scaling, free under MPC).
    With ``weight_masks="per-model"`` the weights are masked as ``PrivateGraph.mask_weights`` does;
    ``offline`` is what that cost.
    """

    def __init__(self, gm: fx.GraphModule, crypten, inputs: list[torch.Tensor], weight_masks: str = "per-query"):
        from .lowering import Stopwatch, owner_shares
        from .weight_masks import mask_weight

        self.gm, self.token_nodes = gm, frozenset()
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.secret = {node: crypten.cryptensor(value) for node, value in zip(placeholders, inputs)}
        weights = {n: getattr(gm, str(n.target)).detach() for n in gm.graph.nodes if n.op == "get_attr"}
        levels = propagate_secrecy(gm)
        values, inverses = owner_shares(gm, levels, weights)
        self.secret.update({node: crypten.cryptensor(value, src=OWNER) for node, value in values.items()})
        self.inverses = {node: crypten.cryptensor(value, src=OWNER) for node, value in inverses.items()}
        self.masked = {}
        with Stopwatch(crypten.communicator.get()) as watch:
            if weight_masks == "per-model":
                metas = form_shapes(gm, inputs)
                for op in classify_graph(gm):
                    for weight in masked_weights(op, levels, metas):
                        self.masked.setdefault(weight, mask_weight(self.secret[weight], "tfp"))
        self.offline = watch.measure

    def value(self, node: fx.Node):
        return self.secret[node]

    def product_operand(self, node: fx.Node):
        return self.masked.get(node) or self.secret[node]

    def owner_inverse(self, node: fx.Node):
        return self.inverses.get(node)

    def inv_sqrt_scale(self, node: fx.Node) -> float:
        return 1.0


def measure_in_party(cases: list[tuple], settings=None, repetitions: int = 1) -> list[dict]:
    """Run inside a CrypTen party: lower and run each (form, rows, length, width), counting communication
    (under ``settings``, a ProtocolSettings, where given); ``repetitions`` > 1: run it that many times on
    the same shares, ``seconds`` the median (``all_seconds`` every run)."""
    from .compat import import_crypten
    from .dispatch import lower_node
    from .lowering import Stopwatch

    crypten = import_crypten()
    if settings is not None:
        settings.apply(crypten)
    crypten.cfg.communicator.verbose = True
    communicator = crypten.communicator.get()
    results = []
    for name, rows, length, width in cases:
        gm, node, inputs = build(name, rows, length, width)
        context = FormContext(gm, crypten, inputs, FORMS[name].weight_masks)
        timings = []
        for _ in range(repetitions):
            with Stopwatch(communicator) as watch:
                lower_node(context, node)
            timings.append(watch.measure.seconds)
        for form, measured in ((name, watch.measure), (WEIGHT_MASK, context.offline)):
            if form == WEIGHT_MASK and not context.masked:
                continue
            results.append({"form": form, "of": name, "rows": rows, "length": length, "width": width,
                            "rounds": measured.rounds, "bytes": measured.bytes, "seconds": round(measured.seconds, 6)})
        if repetitions > 1:
            results[-1 if not context.masked else -2].update(
                seconds=round(median_seconds(timings), 6), all_seconds=[round(t, 6) for t in timings])
    return results


def measure(cases: list[tuple], settings=None, repetitions: int = 1) -> list[dict]:
    """Measure (form, rows, length, width) cases between two CrypTen parties (processes); rank 0's figures,
    each with the analyzer's steps for that node (``{"entry", "features"}``)."""
    from .compat import import_crypten

    import_crypten()
    import crypten.mpc as mpc

    per_rank = mpc.run_multiprocess(world_size=2)(measure_in_party)(cases, settings, repetitions)
    if not per_rank or per_rank[0] is None:
        raise RuntimeError("the CrypTen parties returned no measurements")
    return with_analyzer_steps(per_rank[0])


def with_analyzer_steps(results: list[dict]) -> list[dict]:
    """Rank 0's measurements, each with the analyzer's steps for that node (``{"entry", "features"}``)."""
    for result in results:
        steps = analyzer_steps(result["of"], result["rows"], result["length"], result["width"],
                               offline=result["form"] == WEIGHT_MASK)
        result["steps"] = [{"entry": step.entry, "features": step.features} for step in steps]
    return results


def predict(profile: Profile, measurement: dict):
    """The profile's rounds and bytes for a measurement: the sum over the analyzer's steps."""
    costs = [profile.cost(step["entry"], step["features"]) for step in measurement["steps"]]
    return sum(c.rounds for c in costs), sum(c.bytes for c in costs)


def fit_profile(results: list[dict], lengths) -> tuple[dict, dict]:
    """Profile entries from the forms priced by their own entry alone, then checks of the others."""
    ops: dict[str, dict] = {}
    checked = []
    for form in (form for form in FORMS.values() if not form.compute_only):
        rows = [r for r in results if r["form"] == form.name]
        if not rows:
            raise AeroError(f"calibration: form '{form.name}' was not measured")
        if any([s["entry"] for s in r["steps"]] != [form.name] for r in rows):
            checked.append(form.name)  # priced by other forms' entries: a check of them
        elif form.by_length:
            ops[form.name] = _fit_by_length(form.name, rows, lengths)
        else:
            ops[form.name] = _fit(form.name, form.bytes_by, rows)
    offline = [r for r in results if r["form"] == WEIGHT_MASK]  # the setup of the per-model forms
    if offline:
        ops[WEIGHT_MASK] = _fit(WEIGHT_MASK, ("elements",), offline)
    for alias, measured in ALIASES.items():
        ops[alias] = ops[measured]
    profile = Profile("crypten", {"ops": ops})
    return ops, {name: _check(profile, [r for r in results if r["form"] == name]) for name in checked}


def _fit(name: str, features: tuple[str, ...], results: list[dict]) -> dict:
    rounds = {r["rounds"] for r in results}
    if len(rounds) != 1:
        raise AeroError(f"calibration: {name} took {sorted(rounds)} rounds at different sizes; measure it per length")
    matrix = np.array([[r["steps"][0]["features"][f] for f in features] for r in results], dtype=float)
    target = np.array([r["bytes"] for r in results], dtype=float)
    coefficients, *_ = np.linalg.lstsq(matrix, target, rcond=None)
    coefficients = np.round(coefficients, 4)
    residual = np.max(np.abs(matrix @ coefficients - target) / target)
    return {"rounds": {"calls": rounds.pop()},
            "bytes": {f: float(c) for f, c in zip(features, coefficients) if abs(c) > 1e-9},
            "fit": {"max_relative_residual": float(residual), "points": len(results)}}


def _fit_by_length(name: str, results: list[dict], lengths) -> dict:
    table = {}
    for length in lengths:
        two, three = sorted((r for r in results if r["length"] == length), key=lambda r: r["rows"])
        if two["rounds"] != three["rounds"] or two["bytes"] * 3 != three["bytes"] * 2:
            raise AeroError(f"calibration: {name} at length {length} is not linear in rows "
                            f"({two['bytes']} B for 2 rows, {three['bytes']} B for 3)")
        table[str(length)] = {"rounds": two["rounds"], "bytes_per_row": two["bytes"] / 2}
    entry = {"by_length": table}
    model = _fit_log_reduction(results)
    if model is not None:
        entry["log_reduction"] = model
    return entry


def _fit_log_reduction(results: list[dict]) -> dict | None:
    """Rounds and bytes as linear forms in the log-reduction max's shape (``cost/log_reduction.py``),
    or None where they do not reproduce every measurement (another max method; too few lengths)."""
    shapes = [log_reduction.features(r["length"], r["rows"]) for r in results]
    fitted = {}
    for name, names, exact in (("rounds", log_reduction.ROUND_FEATURES, True),
                               ("bytes", log_reduction.BYTE_FEATURES, False)):
        matrix = np.array([[s[f] for f in names] for s in shapes], dtype=float)
        target = np.array([r[name] for r in results], dtype=float)
        if np.linalg.matrix_rank(matrix) < len(names):
            return None  # the lengths measured cannot tell the features apart
        coefficients, *_ = np.linalg.lstsq(matrix, target, rcond=None)
        coefficients = np.round(coefficients) if exact else np.round(coefficients, 4)
        residual = float(np.max(np.abs(matrix @ coefficients - target) / target))
        if residual > (0.0 if exact else LOG_REDUCTION_TOLERANCE):
            return None
        fitted[name] = {f: float(c) for f, c in zip(names, coefficients) if abs(c) > 1e-9}
        fitted[f"{name}_max_relative_residual"] = residual
    return {"rounds": fitted["rounds"], "bytes": fitted["bytes"],
            "fit": {"max_relative_residual": fitted["bytes_max_relative_residual"], "points": len(results),
                    "lengths": sorted({r["length"] for r in results})}}


def _check(profile: Profile, results: list[dict]) -> dict:
    entries = sorted({s["entry"] for r in results for s in r["steps"]})
    if not all(profile.supports(entry) for entry in entries):
        raise AeroError(f"calibration: the analyzer prices form '{results[0]['form']}' by {entries}, which no "
                        "form calibrates (a form calibrates the entry of its own name)")
    worst = 0.0
    for result in results:
        rounds, nbytes = predict(profile, result)
        error = abs(nbytes - result["bytes"]) / result["bytes"]
        if rounds != result["rounds"] or error > CHECK_TOLERANCE:
            raise AeroError(f"calibration: form '{result['form']}' at [{result['rows']}, {result['length']}] took "
                            f"{result['rounds']} rounds and {result['bytes']} B; its steps "
                            f"{[s['entry'] for s in result['steps']]} predict {rounds} rounds and {nbytes:.0f} B")
        worst = max(worst, error)
    return {"steps": [s["entry"] for s in results[0]["steps"]], "max_relative_error": worst, "points": len(results)}


def calibrate_crypten(lengths=DEFAULT_LENGTHS, command: str = "aero-compile calibrate crypten") -> dict:
    """Measure every form under CrypTen and return the profile (a dict ready for JSON)."""
    started = time.perf_counter()
    results = measure(plan(lengths))
    ops, checks = fit_profile(results, lengths)
    import crypten

    return {
        "name": "crypten",
        "source": {
            "kind": "measured",
            "how": "aero-compile calibrate crypten: each op form of targets/crypten/calibration_forms.py lowered by "
                   "the backend's own dispatch (the code --run-private runs) and run between two parties "
                   "(crypten.mpc.run_multiprocess, gloo) with crypten.cfg.communicator.verbose = True; "
                   "rank 0's get_communication_stats()",
            "command": command,
            "crypten": getattr(crypten, "__version__", "0.4.1"), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
            "seconds": round(time.perf_counter() - started, 1),
            "defaults": "CrypTen 0.4.1 defaults: 2 parties, 16-bit fixed point, trusted-first-party Beaver "
                        "triples (no communication for triples), max by log_reduction",
        },
        "bytes_counted": "per party, as CrypTen's communicator counts it: sent + received for all_reduce "
                         "(each party's figure equals the total traffic of the two-party system)",
        "wire_bytes_per_counted_byte": 0.5,
        "schedule": "sequential",
        "default_variant": DEFAULT_COST_KEY,  # the settings these entries were measured under
        "parameters": "secret-shared (model.encrypt()): products with weights are Beaver products of both operands "
                      "(entries linear, embedding, matmul); with weights masked once per model "
                      "(targets/crypten/weight_masks.py) a product opens its activation only per query "
                      "(matmul/masked-weight) and each weight's W - B is opened once, offline (weight_mask)",
        "ops": ops,
        "checks": checks,
        "measurements": results,
    }


# a variant's softmax/max lengths (its log_reduction fit prices every length; the table alone stops here)
VARIANT_LENGTHS = (2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17, 20, 24, 32, 33, 48, 64, 65, 100, 128, 129, 200, 256)


def calibrate_variant(settings, lengths=VARIANT_LENGTHS, command: str = "") -> dict:
    """Every form measured again under other CrypTen settings: the profile's ``variants[settings.cost_key()]``."""
    started = time.perf_counter()
    results = measure(plan(lengths), settings)
    ops, checks = fit_profile(results, lengths)
    return {"settings": settings.as_dict(), "command": command, "lengths": list(lengths),
            "seconds": round(time.perf_counter() - started, 1), "ops": ops, "checks": checks, "measurements": results}
