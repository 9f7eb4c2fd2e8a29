"""``aero-compile calibrate crypten``: the command line over calibrate.py (bytes and rounds per op form) and
compute_timing.py (seconds per op form), which both build on calibrate.py's measurements.

Kept apart from calibrate.py so that compute_timing can use calibrate's measuring functions while this
command uses both, with no import cycle between them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aero_compile.cost.profiles import DATA_DIR
from aero_compile.errors import AeroError
from aero_compile.fileio import write_json_atomic

from .calibrate import DEFAULT_LENGTHS, VARIANT_LENGTHS, calibrate_crypten, calibrate_variant
from .compute_timing import calibrate_compute
from .protocol_settings import DEFAULT_COST_KEY, ProtocolSettings


def main(argv: list[str]) -> int:
    """Entry point of ``aero-compile calibrate crypten`` (``argv``: the words after ``crypten``)."""
    parser = argparse.ArgumentParser(prog="aero-compile calibrate crypten",
                                     description="Measure each op form under CrypTen and write the crypten cost profile.")
    parser.add_argument("-o", "--output", default=str(DATA_DIR / "crypten.json"),
                        help="profile JSON to write (default: the shipped crypten profile)")
    parser.add_argument("--lengths", default=None,
                        help="reduced lengths at which softmax, log_softmax and max are measured (comma separated; "
                             f"default {','.join(map(str, DEFAULT_LENGTHS))}, with --settings "
                             f"{','.join(map(str, VARIANT_LENGTHS))})")
    parser.add_argument("--settings", metavar="KEY",
                        help="measure a variant under other CrypTen settings (e.g. exp10-rec10-sqrt3-log_reduction, "
                             "as --tune-protocol names them) and add it to the profile at --output")
    parser.add_argument("--compute", action="store_true",
                        help="measure only compute seconds per op form on this CPU (median of --repetitions) and add "
                             "them to the profile at --output; its rounds and bytes are kept (compute_timing.py)")
    parser.add_argument("--repetitions", type=int, default=5, help="with --compute: runs per size (default 5)")
    parser.add_argument("--forms", help="with --compute: the forms to time (comma separated; default every form "
                                        "that calibrates its own entry)")
    args = parser.parse_args(argv)
    if args.lengths is None:
        args.lengths = ",".join(map(str, VARIANT_LENGTHS if args.settings else DEFAULT_LENGTHS))
    try:
        lengths = sorted({int(x) for x in args.lengths.split(",") if x.strip()})
    except ValueError:
        raise AeroError(f"--lengths must be comma-separated integers, got '{args.lengths}'") from None
    if not lengths or min(lengths) < 2:
        raise AeroError("--lengths must name lengths of at least 2")
    command = " ".join(["aero-compile", "calibrate", "crypten", *argv])
    existing = json.loads(Path(args.output).read_text()) if Path(args.output).is_file() else None
    if args.compute:
        if existing is None:
            raise AeroError(f"--compute adds seconds to an existing profile; {args.output} does not exist "
                            "(run `aero-compile calibrate crypten` first)")
        forms = [f.strip() for f in args.forms.split(",")] if args.forms else None
        profile = calibrate_compute(existing, command, args.repetitions, forms)
        write_json_atomic(args.output, profile)
        fits = [(v["seconds_fit"]["max_relative_residual"], k) for k, v in profile["ops"].items() if "seconds_fit" in v]
        print(f"wrote {args.output}: compute seconds for {len(fits)} entries in {profile['source']['compute']['seconds']} s; "
              f"worst fit residual {max(fits)[0]:.1%} ({max(fits)[1]})")
        return 0
    if args.settings and args.settings != DEFAULT_COST_KEY:
        if existing is None:
            raise AeroError(f"--settings adds a variant to an existing profile; {args.output} does not exist "
                            "(run `aero-compile calibrate crypten` first)")
        variant = calibrate_variant(ProtocolSettings.from_cost_key(args.settings), lengths, command)
        existing.setdefault("variants", {})[args.settings] = variant
        write_json_atomic(args.output, existing)
        print(f"wrote {args.output}: variant {args.settings}, {len(variant['ops'])} entries, "
              f"{len(variant['measurements'])} measurements in {variant['seconds']} s")
        return 0
    profile = calibrate_crypten(lengths, command=command)
    for kept in ("variants", "latency"):  # measured under other settings; the network term: kept
        if existing and existing.get(kept):
            profile[kept] = existing[kept]
    write_json_atomic(args.output, profile)
    worst = max((v.get("fit", {}).get("max_relative_residual", 0.0), k) for k, v in profile["ops"].items())
    print(f"wrote {args.output}: {len(profile['ops'])} profile entries, {len(profile['measurements'])} measurements "
          f"in {profile['source']['seconds']} s; worst bytes fit residual {worst[0]:.2%} ({worst[1]}); "
          f"{len(profile['checks'])} checked forms agree with their steps")
    return 0
