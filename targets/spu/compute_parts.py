"""Time the matrix products' compute in parts (each short enough for a quiet window), then fit the profile on all.

    python -m aero_compile.targets.spu.compute_parts time --part 1/3 --out /tmp/matmul.1.json
    python -m aero_compile.targets.spu.compute_parts time --part 2/3 --out /tmp/matmul.2.json
    python -m aero_compile.targets.spu.compute_parts time --part 3/3 --out /tmp/matmul.3.json
    python -m aero_compile.targets.spu.compute_parts merge \
        --update aero_compile/cost/data/spu-cheetah.json /tmp/matmul.*.json

``calibrate spu --update P --compute --compute-forms matmul,matmul/batched`` times every product size between
one pair of processes, minutes on 2 cores; a measurement taken while other work runs is distorted, and a
quiet window is short. ``time`` times one part (sizes dealt out so that the parts take about as long, by the HE
work each size does, ``cheetah_packing.dot_ole_work``) between its own pair of processes, exactly as
``process_timing`` does; ``merge`` refits the matrix-product entries' seconds on every part's cases (pooled:
a part may be timed again for more runs), nothing else, and records where each part was timed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aero_compile.errors import AeroError
from aero_compile.fileio import write_json_atomic

FORMS = ("matmul", "matmul/batched")


def _work(form: str, size: tuple[int, int, int]) -> float:
    """A rough cost of one run of a size, to deal sizes out evenly (not a prediction)."""
    from aero_compile.cost.cheetah_packing import dot_ole_work

    work = dot_ole_work(*size)
    heads = 4 if form == "matmul/batched" else 1
    return heads * (0.02 + 0.004 * work["automorphisms"] + 0.0015 * (work["plain"] + work["result_blocks"]))


def parts(count: int) -> list[list[tuple[str, tuple[int, int, int]]]]:
    """Every (form, size) of FORMS dealt into ``count`` parts of about equal work (largest first, to the lightest)."""
    from .process_timing import sizes_of

    items = sorted(((form, tuple(size)) for form in FORMS for size in sizes_of(form)),
                   key=lambda item: -_work(*item))
    dealt, loads = [[] for _ in range(count)], [0.0] * count
    for item in items:
        lightest = loads.index(min(loads))
        dealt[lightest].append(item)
        loads[lightest] += _work(*item)
    return dealt


def time_part(index: int, count: int, command: str) -> dict:
    """Time part ``index`` (1-based) of ``count``: its cases, the fixed cost its processes measured, where."""
    from aero_compile.targets.private.calibration import machine

    from .process_timing import time_forms_in_processes

    mine = parts(count)[index - 1]
    started = machine()
    cases, fixed = [], None
    for form in FORMS:
        sizes = tuple(size for f, size in mine if f == form)
        if not sizes:
            continue
        timed, fixed_here = time_forms_in_processes([form], matmul_sizes=sizes, batched_sizes=sizes)
        cases += [{**case, "fixed_s": fixed_here["seconds"]} for case in timed]  # what its pair's empty runs took
        runs = (fixed or {"runs": []})["runs"] + fixed_here["runs"]
        fixed = {"seconds": fixed["seconds"] if fixed else fixed_here["seconds"], "runs": runs}
    return {"part": f"{index}/{count}", "cases": cases, "fixed": fixed,
            "where": {**started, "load_average_1min_at_end": machine()["load_average_1min"], "command": command}}


def pooled_cases(loaded: list[dict]) -> list[dict]:
    """One case per (form, size) from every part file that timed it: the runs of all of them pooled, each less
    the fixed cost its own processes measured, refill runs left out (``process_timing.fold_runs``), ``seconds``
    their median."""
    from .process_timing import refill_free_median

    pooled: dict[tuple, dict] = {}
    for part in loaded:
        for case in part["cases"]:
            key = (case["form"], case["rows"], case["length"], case["width"])
            empty = {"runs_seconds": [], "runs_rounds": [], "runs_bytes": [], "repeats": 0, "_own": []}
            into = pooled.setdefault(key, {**case, **empty})
            fixed = case.get("fixed_s", part["fixed"]["seconds"])
            into["_own"] += [(s - fixed, n) for s, n in zip(case["runs_seconds"], case["runs_rounds"])]
            for field in ("runs_seconds", "runs_rounds", "runs_bytes"):
                into[field] += case[field]
            into["repeats"] += case["repeats"]
    cases = []
    for case in pooled.values():
        median, left_out = refill_free_median(case.pop("_own"))
        cases.append({**case, "refill_runs": left_out, "seconds": round(max(median, 0.0), 5)})
    return cases


def _where(loaded: list[dict]) -> dict:
    """Where the parts were timed, as one source states it: the machine, the last part's date, the highest load."""
    wheres = [part["where"] for part in loaded]
    return {"cpu": wheres[0]["cpu"], "cores": wheres[0]["cores"], "torch_threads": wheres[0]["torch_threads"],
            "date": max(w["date"] for w in wheres),
            "load_average_1min": max(w["load_average_1min"] for w in wheres),
            "load_average_1min_at_end": max(w["load_average_1min_at_end"] for w in wheres)}


def merge(profile_path: str, part_paths: list[str], command: str) -> dict:
    """The profile with its matrix products' ``seconds`` refitted on every part's cases (nothing else refitted),
    the cases in ``timing_measurements``, and where each part was timed in ``latency.compute_source``."""
    from .calibrate import refit
    from .process_timing import COMPUTE_NOTE, merged_compute_source, sizes_of

    profile = json.loads(Path(profile_path).read_text())
    loaded = [json.loads(Path(p).read_text()) for p in part_paths]
    cases = pooled_cases(loaded)
    timed = {(c["form"], c["rows"], c["length"], c["width"]) for c in cases}
    missing = [f"{form} {'x'.join(map(str, size))}" for form in FORMS for size in sizes_of(form)
               if (form, *size) not in timed]
    if missing:
        raise AeroError(f"merge: {len(missing)} sizes were timed by no part ({', '.join(missing[:4])}, ...): "
                        "time every part I/N of one N")
    refitted = refit(json.loads(json.dumps(profile)), command, timings=cases)
    # compute only: every entry's rounds, bytes and messages stay as recorded (a refit would also refit the
    # products' messages on these runs' counts); the matrix entries take the refitted seconds
    for name, entry in refitted["ops"].items():
        if "seconds_fit" in entry and name in profile["ops"]:
            profile["ops"][name].update(seconds=entry["seconds"], seconds_fit=entry["seconds_fit"])
    profile["timing_measurements"] = refitted["timing_measurements"]
    profile["source"]["updates"] = refitted["source"]["updates"]
    latest = {"kind": "measured", "forms": list(FORMS),
              "how": "2 processes over brpc loopback per part (targets/spu/compute_parts.py, process_timing.py), "
                     "back-to-back runs of each size pooled over the parts that timed it, each less its part's "
                     "empty-program median; seconds: the median of the refill-free runs (model owner's profiler)",
              "parts": [{"part": p["part"], "fixed_s": p["fixed"]["seconds"], **p["where"]} for p in loaded],
              **_where(loaded), "command": command}
    profile["latency"]["compute_source"] = merged_compute_source(profile, latest)
    profile["latency"]["compute"] = COMPUTE_NOTE
    return profile


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m aero_compile.targets.spu.compute_parts",
                                     description="Time SPU cheetah's matrix products in parts, then refit the profile.")
    sub = parser.add_subparsers(dest="action", required=True)
    timing = sub.add_parser("time", help="time one part of the product sizes between two processes")
    timing.add_argument("--part", required=True, metavar="I/N", help="which part of how many (e.g. 1/3)")
    timing.add_argument("--out", required=True, help="JSON the part's timed cases are written to")
    merging = sub.add_parser("merge", help="refit a profile's matrix products on every part's cases")
    merging.add_argument("--update", required=True, metavar="PROFILE", help="spu-cheetah profile to refit in place")
    merging.add_argument("parts", nargs="+", help="the parts' JSON files (every size timed by one at least; a size "
                         "timed by several: their runs pooled)")
    args = parser.parse_args(argv)
    command = " ".join(["python -m aero_compile.targets.spu.compute_parts", *argv])
    if args.action == "time":
        try:
            index, count = (int(x) for x in args.part.split("/"))
            if not 1 <= index <= count:
                raise ValueError
        except ValueError:
            raise AeroError(f"--part {args.part}: give I/N with 1 <= I <= N (e.g. 1/3)") from None
        write_json_atomic(args.out, time_part(index, count, command))
        print(f"wrote {args.out}: part {index}/{count}")
        return 0
    write_json_atomic(args.update, merge(args.update, args.parts, command))
    print(f"wrote {args.update}: matrix products refitted on {len(args.parts)} parts")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except AeroError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
