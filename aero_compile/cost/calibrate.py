"""``aero-compile calibrate crypten``: measure every op under CrypTen and write the crypten profile.

    aero-compile calibrate crypten                 # rewrites aero_compile/cost/data/crypten.json
    aero-compile calibrate crypten -o my.json --lengths 16,128,1000

Each op kind's CrypTen program (``crypten_ops.py``) runs between two parties at several sizes with
communication statistics on. Rounds must not change with size (else the kind is measured per length);
bytes are fitted, by least squares, as a linear form in the features that explain them (per element,
per row, per call), and the largest relative residual is recorded beside the coefficients.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np

from ..errors import AeroError
from ..fileio import write_json_atomic
from .crypten_ops import BY_LENGTH, PROGRAMS
from .profiles import DATA_DIR

DEFAULT_LENGTHS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# (rows, length) grid for kinds whose rounds do not depend on size; matmul adds an output width.
GRID = ((2, 8), (4, 8), (2, 32), (4, 32), (3, 20))
# Which features explain the bytes of each kind (see features.py).
_NORM_FEATURES = ("elements", "rows", "length")
_PRODUCT_FEATURES = ("operand_elements",)
# Profile kind -> the measured program it uses (one Beaver product for all matrix products).
_ALIASES = {"linear": "matmul", "embedding": "matmul"}


def _features(kind: str, shape, width: int) -> dict[str, float]:
    rows, length = shape
    if kind == "matmul":
        return {"operand_elements": rows * length + length * width}
    if kind == "mul":
        return {"operand_elements": 2 * rows * length}
    return {"elements": rows * length, "rows": rows, "length": length}


def _fit(kind: str, results: list[dict]) -> dict:
    names = _PRODUCT_FEATURES if kind in ("matmul", "mul") else (_NORM_FEATURES if kind.endswith("norm") else ("elements",))
    rounds = {r["rounds"] for r in results}
    if len(rounds) != 1:
        raise AeroError(f"calibration: {kind} took {sorted(rounds)} rounds at different sizes; measure it per length")
    matrix = np.array([[_features(kind, r["shape"], r["width"])[n] for n in names] for r in results], dtype=float)
    target = np.array([r["bytes"] for r in results], dtype=float)
    coefficients, *_ = np.linalg.lstsq(matrix, target, rcond=None)
    coefficients = np.round(coefficients, 4)
    residual = np.max(np.abs(matrix @ coefficients - target) / target)
    return {"rounds": {"calls": rounds.pop()},
            "bytes": {n: float(c) for n, c in zip(names, coefficients) if abs(c) > 1e-9},
            "fit": {"max_relative_residual": float(residual), "points": len(results)}}


def _cases(lengths) -> list[tuple]:
    cases = []
    for kind in PROGRAMS:
        if kind in BY_LENGTH:
            for length in lengths:
                cases += [(kind, (2, length), 0), (kind, (3, length), 0)]
        else:
            cases += [(kind, shape, 8 + shape[0]) for shape in GRID]
    return cases


def calibrate_crypten(lengths=DEFAULT_LENGTHS, command: str = "aero-compile calibrate crypten") -> dict:
    """Measure every op kind under CrypTen and return the profile (a dict ready for JSON)."""
    from .crypten_ops import measure

    started = time.perf_counter()
    results = measure(_cases(lengths))
    ops: dict[str, dict] = {}
    for kind in PROGRAMS:
        rows = [r for r in results if r["kind"] == kind]
        if kind in BY_LENGTH:
            table = {}
            for length in lengths:
                two, three = [r for r in rows if r["shape"][1] == length]
                if two["rounds"] != three["rounds"] or two["bytes"] * 3 != three["bytes"] * 2:
                    raise AeroError(f"calibration: {kind} at length {length} is not linear in rows "
                                    f"({two['bytes']} B for 2 rows, {three['bytes']} B for 3)")
                table[str(length)] = {"rounds": two["rounds"], "bytes_per_row": two["bytes"] / 2}
            ops[kind] = {"by_length": table}
        else:
            ops[kind] = _fit(kind, rows)
    for alias, measured in _ALIASES.items():
        ops[alias] = ops[measured]
    import crypten  # noqa: F401  (imported by measure(); for its version)
    import torch

    return {
        "name": "crypten",
        "source": {
            "kind": "measured",
            "how": "aero-compile calibrate crypten: each op's CrypTen program (aero_compile/cost/crypten_ops.py) "
                   "run between two parties (crypten.mpc.run_multiprocess, gloo) with "
                   "crypten.cfg.communicator.verbose = True; rank 0's get_communication_stats()",
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
        "parameters": "secret-shared (model.encrypt()): products with weights are Beaver products of both operands",
        "ops": ops,
        "measurements": results,
    }


def main(argv: list[str]) -> int:
    """Entry point of ``aero-compile calibrate``."""
    parser = argparse.ArgumentParser(prog="aero-compile calibrate",
                                     description="Measure each op under a protocol and write its cost profile.")
    parser.add_argument("protocol", choices=["crypten"], help="protocol to measure (bumblebee is fitted: "
                        "python -m aero_compile.cost.fit_bumblebee)")
    parser.add_argument("-o", "--output", default=str(DATA_DIR / "crypten.json"),
                        help="profile JSON to write (default: the shipped crypten profile)")
    parser.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)),
                        help="reduced lengths at which softmax/max are measured (comma separated)")
    args = parser.parse_args(argv)
    try:
        lengths = sorted({int(x) for x in args.lengths.split(",") if x.strip()})
    except ValueError:
        raise AeroError(f"--lengths must be comma-separated integers, got '{args.lengths}'") from None
    if not lengths or min(lengths) < 2:
        raise AeroError("--lengths must name lengths of at least 2")
    profile = calibrate_crypten(lengths, command=" ".join(["aero-compile", "calibrate", *argv]))
    write_json_atomic(args.output, profile)
    worst = max((v.get("fit", {}).get("max_relative_residual", 0.0), k) for k, v in profile["ops"].items())
    print(f"wrote {args.output}: {len(profile['ops'])} op kinds, {len(profile['measurements'])} measurements "
          f"in {profile['source']['seconds']} s; worst bytes fit residual {worst[0]:.2%} ({worst[1]})")
    return 0
