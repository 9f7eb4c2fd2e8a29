"""How well SPU cheetah's matrix-product compute line predicts shapes it was not fitted on.

    python benchmarks/spu_matmul_fit.py                       # the shipped profile's timed products
    python benchmarks/spu_matmul_fit.py --profile my.json

Reads the products timed between two processes (the profile's ``timing_measurements`` of ``matmul`` and
``matmul/batched``, written by ``targets/spu/compute_parts.py``), fits the entry's features
(``calibration_forms.MATRIX_SECONDS``) on all but ``process_timing.HELD_OUT_SIZES`` and prints each shape's
error, training and held out, then the fit on every shape (what the profile ships). No timing is taken.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main(argv=None) -> int:
    from aero_compile.cost.profiles import DATA_DIR
    from aero_compile.targets.private.calibration import fit_linear
    from aero_compile.targets.spu.calibration_forms import MATRIX_SECONDS
    from aero_compile.targets.spu.process_timing import HELD_OUT_SIZES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=DATA_DIR / "spu-cheetah.json")
    args = parser.parse_args(argv)
    timed = [r for r in json.loads(args.profile.read_text()).get("timing_measurements", [])
             if r["form"] in ("matmul", "matmul/batched")]
    held = [r for r in timed if r["form"] == "matmul" and (r["rows"], r["length"], r["width"]) in HELD_OUT_SIZES]
    train = [r for r in timed if r not in held]
    if not train or not held:
        print(f"{args.profile}: {len(train)} training and {len(held)} held-out products timed; nothing to check")
        return 1

    def features(r):
        return r["steps"][0]["features"]

    coefficients, _ = fit_linear([features(r) for r in train], [r["seconds"] for r in train], MATRIX_SECONDS)
    print("fit on", len(train), "shapes:", ", ".join(f"{f} {c:.4g}" for f, c in coefficients.items()))
    errors = {"train": [], "held out": []}
    for r in sorted(timed, key=lambda r: r["seconds"]):
        predicted = sum(c * features(r).get(f, 0.0) for f, c in coefficients.items())
        kind = "held out" if r in held else "train"
        errors[kind].append(predicted / r["seconds"] - 1)
        heads = "4 x " if r["form"] == "matmul/batched" else ""
        print(f"  {kind:<8} {heads}[{r['rows']} x {r['length']}] . [{r['length']} x {r['width']}]: measured "
              f"{r['seconds']:.3f} s (runs {r['runs_seconds']}), predicted {predicted:.3f} s ({errors[kind][-1]:+.1%})")
    for kind, values in errors.items():
        print(f"{kind}: {len(values)} shapes, median |error| {statistics.median(map(abs, values)):.1%}, "
              f"worst {max(values, key=abs):+.1%}")
    _, residual = fit_linear([features(r) for r in timed], [r["seconds"] for r in timed], MATRIX_SECONDS)
    print(f"fit on all {len(timed)} shapes (shipped): largest relative residual {residual:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
