"""``--engine spu``: run ``--run-private`` under SecretFlow SPU instead of CrypTen.

    aero-compile gpt2-tiny --passes all --protocol spu-cheetah --run-private --engine spu --report-json r.json
    aero-compile llama-tiny --run-private --engine spu --spu-protocol semi2k

Fills the JSON report's ``"measured": {"before": {...}, "after": {...}}`` as the CrypTen run does,
with ``"engine": "spu"`` and the protocol, and prints it beside the cost analyzer's prediction under
the ``spu-PROTOCOL`` profile where one is shipped (``aero-compile calibrate spu`` writes it).
The options ``--run-private``, ``--private-seq-len`` and ``--party-timeout`` are the CrypTen
extension's, shared.
"""

from __future__ import annotations

import argparse

from aero_compile.errors import AeroError
from aero_compile.graph_info import graph_info
from aero_compile.report import format_ratio
from aero_compile.targets.private.measured import before_after as _pair

from .config import PROTOCOLS

ENGINES = ("crypten", "spu")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("private execution (SPU)")
    group.add_argument("--engine", choices=ENGINES, default="crypten",
                       help="the MPC engine of --run-private: crypten (default) or spu (SecretFlow SPU)")
    group.add_argument("--spu-protocol", choices=sorted(PROTOCOLS), default="cheetah",
                       help="SPU protocol: cheetah (2PC, HE + silent OT, the AERO paper's family; default), "
                            "semi2k (2PC, dealer-assisted) or aby3 (3PC)")
    group.add_argument("--spu-party", type=int, metavar="RANK",
                       help="multi-host: be this one SPU party (0 model owner, 1 client, 2 aby3's third) instead of "
                            "starting them all on this machine; needs --spu-addresses")
    group.add_argument("--spu-addresses", metavar="HOST:PORT,...",
                       help="with --spu-party: every party's address, in rank order")


def _prediction(gm, protocol: str, seq_len: int) -> dict | None:
    """The analyzer's prediction under the measured ``spu-PROTOCOL`` profile, or None if none is shipped."""
    from aero_compile.cost import analyze
    from aero_compile.cost.profiles import DATA_DIR

    name = f"spu-{protocol}"
    if not (DATA_DIR / f"{name}.json").exists():
        return None
    report = analyze(gm, profile=name, seq_len=seq_len, batch=1)
    return {"profile": name, "rounds": int(report.rounds), "bytes": int(report.bytes)}


def apply(args: argparse.Namespace, result) -> None:
    if args.engine != "spu":
        return
    if not args.run_private:
        raise AeroError("--engine spu selects the engine of --run-private: add --run-private")
    if args.party:
        raise AeroError("--party is CrypTen's multi-host mode; for SPU parties on separate hosts use "
                        "--spu-party RANK --spu-addresses HOST:PORT,... (see the README's SPU section)")
    protocol = args.spu_protocol
    analyzer_protocol = getattr(args, "protocol", None)
    if analyzer_protocol and analyzer_protocol.startswith("spu-") and analyzer_protocol != f"spu-{protocol}":
        raise AeroError(f"--protocol {analyzer_protocol} prices another SPU protocol than --spu-protocol {protocol}: "
                        f"use --protocol spu-{protocol}")
    seq_len = args.private_seq_len if args.private_seq_len is not None else args.seq_len
    if seq_len < 1:
        raise AeroError(f"--private-seq-len must be a positive integer, got {seq_len}")
    graph_info(result.before).check_seq_len(seq_len, "--private-seq-len")
    if args.party_timeout <= 0:
        raise AeroError(f"--party-timeout must be positive, got {args.party_timeout}")
    graphs = {"before": result.before, "after": result.graph_module}
    from aero_compile.targets.private.link.options import describe_link, refuse_on_multihost, requested_link

    link = requested_link(getattr(args, "network", None), getattr(args, "bandwidth_mbps", None),
                          getattr(args, "rtt_ms", None))
    if args.spu_party is not None or args.spu_addresses:
        refuse_on_multihost(link, "--spu-party")
        if args.spu_party is None or not args.spu_addresses:
            raise AeroError("--spu-party and --spu-addresses go together (e.g. --spu-party 0 "
                            "--spu-addresses 10.0.0.1:9530,10.0.0.2:9531)")
        from .multihost import parse_addresses, run_as_party

        measured = run_as_party(graphs, rank=args.spu_party, addresses=parse_addresses(args.spu_addresses, protocol),
                                seq_len=seq_len, protocol=protocol, timeout_s=args.party_timeout,
                                logits_out=args.private_logits_out)
        result.report.measured = measured
        after = measured["after"]
        print(f"SPU {protocol} party {args.spu_party} ({after['role']}): {measured['before']['bytes']:,} -> "
              f"{after['bytes']:,} bytes, {measured['before']['rounds']:,} -> {after['rounds']:,} messages")
        return
    from .runner import run_private

    measured = run_private(graphs, seq_len=seq_len, protocol=protocol, mode="processes", timeout_s=args.party_timeout,
                           link=link)
    for name, gm in graphs.items():
        measured[name]["predicted"] = _prediction(gm, protocol, seq_len)
    result.report.measured = measured
    print_measured(measured, protocol)
    print(describe_link(measured["after"]))


def print_measured(measured: dict, protocol: str, console=None) -> None:
    """Per SPU op, bytes and messages before -> after, totals, the analyzer's prediction, the logits error."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    before, after = measured["before"], measured["after"]
    table = Table(title=f"measured under SPU {protocol} ({PROTOCOLS[protocol][2]}), T={before['seq_len']}")
    for column in ("SPU op", "messages (owner sends)", "bytes (both directions)", "seconds"):
        table.add_column(column, justify="left" if column == "SPU op" else "right")
    ops = sorted(set(before["by_op"]) | set(after["by_op"]), key=lambda k: -before["by_op"].get(k, {}).get("bytes", 0))
    for op in ops:
        b, a = before["by_op"].get(op, {}), after["by_op"].get(op, {})
        table.add_row(op, _pair(b.get("rounds", 0), a.get("rounds", 0)), _pair(b.get("bytes", 0), a.get("bytes", 0)),
                      _pair(b.get("seconds", 0.0), a.get("seconds", 0.0), "{:.3f}"))
    table.add_row("total", _pair(before["rounds"], after["rounds"]), _pair(before["bytes"], after["bytes"]),
                  _pair(before["seconds"], after["seconds"], "{:.3f}"), style="bold")
    table.add_row("saving", format_ratio(before["rounds"], after["rounds"]),
                  format_ratio(before["bytes"], after["bytes"]), format_ratio(before["seconds"], after["seconds"]))
    pb, pa = before.get("predicted"), after.get("predicted")
    if pb and pa:
        table.add_row(f"analyzer predicts ({pb['profile']})", _pair(pb["rounds"], pa["rounds"]),
                      _pair(pb["bytes"], pa["bytes"]), "")
    console.print(table)
    console.print(f"setup (once per connection: keys, base OTs): {before['setup']['bytes']:,} bytes; "
                  f"compiled in {before['compile_seconds']:.1f} s")
    for name in ("before", "after"):
        m = measured[name]
        console.print(f"{name}: logits max abs error {m['max_abs_error']:.2e}, argmax agreement "
                      f"{m['argmax_agreement']:.1%} ({m['argmax_agreement_resolvable']:.1%} of positions whose "
                      "plaintext top-2 margin exceeds twice the error)")
    if pb is None:
        console.print(f"predicted: no spu-{protocol} profile is shipped (aero-compile calibrate spu writes spu-cheetah)")
