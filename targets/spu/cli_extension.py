"""``--engine spu``: run ``--run-private`` under SecretFlow SPU instead of CrypTen.

    aero-compile gpt2-tiny --passes all --protocol spu-cheetah --run-private --engine spu --report-json r.json
    aero-compile llama-tiny --run-private --engine spu --spu-protocol semi2k

Fills the JSON report's ``"measured": {"before": {...}, "after": {...}}`` as the CrypTen run does,
with ``"engine": "spu"`` and the protocol, and prints it beside the cost analyzer's prediction under
the ``spu-PROTOCOL`` profile where one is shipped (``aero-compile calibrate spu`` writes it).
The shared options (``--run-private``, ``--engine``, ``--private-seq-len``, ``--party-timeout``, ...)
are ``targets/private/options.py``'s; this module adds SPU's own and runs it.
"""

from __future__ import annotations

import argparse

from aero_compile.errors import AeroError
from aero_compile.targets.private.measured import before_after as _pair
from aero_compile.targets.private.measured import measured_table
from aero_compile.targets.private.security import announce_security, attach_security, link_mode, security_block

from .config import PROTOCOLS

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """SPU's own options (the shared ones, --run-private and the rest, are targets/private/options.py's)."""
    group = parser.add_argument_group("private execution (SPU)")
    group.add_argument("--spu-protocol", choices=sorted(PROTOCOLS), default=None,
                       help="SPU protocol: cheetah (2PC, HE + silent OT, the AERO paper's family; default), "
                            "semi2k (2PC, dealer-assisted) or aby3 (3PC)")
    group.add_argument("--spu-party", type=int, metavar="RANK",
                       help="multi-host: be this one SPU party (0 model owner, 1 client, 2 aby3's third) instead of "
                            "starting them all on this machine; needs --spu-addresses")
    group.add_argument("--spu-addresses", metavar="HOST:PORT,...",
                       help="with --spu-party: every party's address, in rank order")


# dest -> flag of this engine's options: given with another engine, the private layer refuses them.
OPTIONS = {"spu_protocol": "--spu-protocol", "spu_party": "--spu-party", "spu_addresses": "--spu-addresses"}
DEFAULT_PROTOCOL = "cheetah"


def given_options(args: argparse.Namespace) -> list[str]:
    """The flags of this engine's options that the command line set."""
    return [flag for dest, flag in OPTIONS.items() if getattr(args, dest, None) is not None]


def _protocol(args: argparse.Namespace) -> str:
    return args.spu_protocol or DEFAULT_PROTOCOL


def multihost_flag(args: argparse.Namespace) -> str | None:
    """The flag that makes this run one party between hosts, if given (the shared layer asks every engine)."""
    return "--spu-party" if args.spu_party is not None else None


def profile_for(args: argparse.Namespace) -> str:
    """The cost profile an SPU run is priced by: ``spu-PROTOCOL``."""
    return f"spu-{_protocol(args)}"


def check(args: argparse.Namespace) -> None:
    """SPU's options, before anything runs (one-line AeroError)."""
    if args.party:
        raise AeroError("--party is CrypTen's multi-host mode; for SPU parties on separate hosts use "
                        "--spu-party RANK --spu-addresses HOST:PORT,... (docs/private-spu.md)")
    protocol = _protocol(args)
    from aero_compile.cost.cli_extension import requested_profile

    analyzer_protocol = requested_profile(args)
    if analyzer_protocol and analyzer_protocol.startswith("spu-") and analyzer_protocol != f"spu-{protocol}":
        raise AeroError(f"--protocol {analyzer_protocol} prices another SPU protocol than --spu-protocol {protocol}: "
                        f"use --protocol spu-{protocol}")
    if args.spu_party is not None or args.spu_addresses:
        if args.spu_party is None or not args.spu_addresses:
            raise AeroError("--spu-party and --spu-addresses go together (e.g. --spu-party 0 "
                            "--spu-addresses 10.0.0.1:9530,10.0.0.2:9531)")
        from .multihost import CLIENT, parse_addresses

        addresses = parse_addresses(args.spu_addresses, protocol)  # a bad address fails now, not after the passes
        if not 0 <= args.spu_party < len(addresses):
            raise AeroError(f"--spu-party must be a rank between 0 and {len(addresses) - 1}, got {args.spu_party}")
        if args.private_logits_out and args.spu_party != CLIENT:
            raise AeroError(f"--private-logits-out: only the client (--spu-party {CLIENT}) reconstructs the logits; "
                            f"drop it on rank {args.spu_party}")
        from .multihost import link_files

        link_files(args.spu_party, args.tls, args.insecure_link)  # --tls or --insecure-link, and the files, now
    else:
        link_mode(multihost=False, tls=args.tls, insecure_link=args.insecure_link)  # one machine: no link to secure


def _prediction(gm, protocol: str, seq_len: int, link: dict | None = None) -> dict | None:
    """The analyzer's prediction under the measured ``spu-PROTOCOL`` profile, or None if none is shipped."""
    from aero_compile.cost import analyze
    from aero_compile.cost.profiles import DATA_DIR

    name = f"spu-{protocol}"
    if not (DATA_DIR / f"{name}.json").exists():
        return None
    from aero_compile.cost.latency import latency_prediction, run_network

    report = analyze(gm, profile=name, network=run_network(link), seq_len=seq_len, batch=1)
    return {"profile": name, "rounds": int(report.rounds), "bytes": int(report.bytes), **latency_prediction(report)}


def run(args: argparse.Namespace, graphs: dict, result, run) -> None:
    """Run ``graphs`` under SPU as ``run`` (targets.private.options.PrivateRun) says; print and record it."""
    protocol = _protocol(args)
    if args.spu_party is not None:
        from .multihost import parse_addresses, run_as_party

        measured = run_as_party(graphs, rank=args.spu_party, addresses=parse_addresses(args.spu_addresses, protocol),
                                seq_len=run.seq_len, protocol=protocol, timeout_s=run.timeout_s,
                                logits_out=run.logits_out, tls=run.tls, insecure_link=run.insecure_link)
        result.report.measured = measured
        after = measured["after"]
        print(f"SPU {protocol} party {args.spu_party} ({after['role']}): {measured['before']['bytes']:,} -> "
              f"{after['bytes']:,} bytes, {measured['before']['rounds']:,} -> {after['rounds']:,} messages")
        announce_security(measured)
        return
    from .runner import run_private

    from aero_compile.targets.private.link.selection import describe_link

    measured = run_private(graphs, seq_len=run.seq_len, protocol=protocol, mode="processes", timeout_s=run.timeout_s,
                           link=run.emulated_link, repetitions=run.repetitions)
    for name, gm in graphs.items():
        measured[name]["predicted"] = _prediction(gm, protocol, run.seq_len, measured[name].get("link"))
    attach_security(measured, security_block(engine="spu", provider=protocol, hosts="loopback"))
    result.report.measured = measured
    print_measured(measured, protocol)
    announce_security(measured)
    print(describe_link(measured["after"]))


def print_measured(measured: dict, protocol: str, console=None) -> None:
    """Per SPU op, bytes and messages before -> after, totals, the analyzer's prediction, the logits error."""
    from rich.console import Console

    console = console or Console()
    before, after = measured["before"], measured["after"]
    pb, pa = before.get("predicted"), after.get("predicted")
    table = measured_table(measured, title=f"measured under SPU {protocol} ({PROTOCOLS[protocol][2]}), T={before['seq_len']}",
                           columns=("SPU op", "messages (owner sends)", "bytes (both directions)", "seconds"),
                           order_by="bytes", predicted_label="analyzer predicts ({profile})")
    console.print(table)
    if pb and pa and "latency_s" in pb:
        console.print(f"seconds: the owner's execution time, {before['timing']['statistic']} of "
                      f"{before['timing']['repetitions']} runs; predicted on {pb['network']['name']}: compute "
                      f"{_pair(pb['compute_s'], pa['compute_s'], '{:.3f}')} s + messages "
                      f"{_pair(pb['network_s'], pa['network_s'], '{:.3f}')} s (SPU times per pphlo op, which the "
                      "analyzer's op kinds do not map onto one to one: totals only)")
    console.print(f"setup (once per connection: keys, base OTs): {before['setup']['bytes']:,} bytes; "
                  f"compiled in {before['compile_seconds']:.1f} s")
    for name in ("before", "after"):
        m = measured[name]
        console.print(f"{name}: logits max abs error {m['max_abs_error']:.2e}, argmax agreement "
                      f"{m['argmax_agreement']:.1%} ({m['argmax_agreement_resolvable']:.1%} of positions whose "
                      "plaintext top-2 margin exceeds twice the error)")
    if pb is None:
        console.print(f"predicted: no spu-{protocol} profile is shipped (aero-compile calibrate spu writes spu-cheetah)")


def generate(gm, prompt_ids, new_tokens: int, args: argparse.Namespace, programs=None) -> dict:
    """``--run-private --generate N`` under SPU on this machine (private.engines: ``generation``)."""
    from .generation import generate_privately

    return generate_privately(gm, prompt_ids, new_tokens, protocol=_protocol(args), programs=programs,
                              timeout_s=getattr(args, "party_timeout", None) or 300.0,
                              sampling=getattr(args, "sampling", None))
