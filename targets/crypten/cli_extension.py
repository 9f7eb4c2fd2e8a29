"""``--run-private`` under CrypTen (the default engine): run the graph before and after the passes, report the cost.

    aero-compile gpt2-tiny --passes all --run-private --private-seq-len 32
    aero-compile llama-tiny --run-private --crypten-provider ttp --report-json r.json

Adds ``"measured": {"before": {...}, "after": {...}}`` to the JSON report (the client's rounds, bytes
and forward wall time, the logits error) and prints them next to the cost analyzer's
``crypten`` prediction where the analyzer is available.
"""

from __future__ import annotations

import argparse

from aero_compile.errors import AeroError
from aero_compile.targets.private.measured import before_after as _pair
from aero_compile.targets.private.measured import measured_table
from aero_compile.targets.private.security import announce_security, attach_security, link_mode, security_block

from .multihost import MULTIHOST_PROVIDER
from .party import PROVIDERS

PROVIDER_MEANING = {
    "tfp": "trusted first party: each party makes its own Beaver triples (fast, NOT secure)",
    "ttp": "trusted third party: a separate dealer process makes the triples (secure if it does not collude)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CrypTen's own options (the shared ones, --run-private and the rest, are targets/private/options.py's)."""
    group = parser.add_argument_group("private execution (CrypTen)")
    group.add_argument("--crypten-provider", choices=sorted(PROVIDERS), default=None,
                       help="where Beaver triples come from: tfp (the model owner's process makes them, not secure; "
                            "the default on one machine) or ttp (a dealer process; the default with --party)")
    group.add_argument("--tune-protocol", action="store_true",
                       help="with --run-private: try CrypTen settings (fixed-point bits, exp/reciprocal/inv_sqrt "
                            "iterations, max method), cheapest by the analyzer first, and keep the cheapest whose "
                            "argmax agreement with plaintext reaches 99%% before and after the passes")


# dest -> flag of this engine's options: given with another engine, the private layer refuses them.
OPTIONS = {"crypten_provider": "--crypten-provider", "tune_protocol": "--tune-protocol"}
DEFAULT_PROVIDER = "tfp"  # on one machine (a measurement); between hosts, multihost.MULTIHOST_PROVIDER (ttp)


def given_options(args: argparse.Namespace) -> list[str]:
    """The flags of this engine's options that the command line set."""
    return [flag for dest, flag in OPTIONS.items() if getattr(args, dest, None) not in (None, False)]


def multihost_flag(args: argparse.Namespace) -> str | None:
    """The flag that makes this run one party between hosts, if given (the shared layer asks every engine)."""
    return "--party" if args.party else None


def profile_for(args: argparse.Namespace) -> str:
    """The cost profile a CrypTen run is priced by."""
    return "crypten"


def check(args: argparse.Namespace) -> None:
    """CrypTen's options, before anything runs (one-line AeroError)."""
    if args.tune_protocol and not args.run_private:
        raise AeroError("--tune-protocol tunes a private run: add --run-private")
    if args.tune_protocol and args.party:
        raise AeroError("--tune-protocol runs the parties itself, on this machine: drop --party")
    if args.tune_protocol and args.tls:
        raise AeroError("--tune-protocol measures settings over bare loopback links: drop --tls (measure TLS's cost "
                        "with a plain --run-private --tls DIR)")
    link_mode(multihost=args.party, tls=args.tls, insecure_link=args.insecure_link, loopback_tls=True)
    if args.party and args.tls:  # this host's rank and its role's certificate files, before anything loads
        from aero_compile.targets.private.link.tls import TlsRoles

        from .multihost import MULTIHOST_PROVIDER, party_rank
        from .party import ROLE_KEYS

        TlsRoles.load(args.tls, ROLE_KEYS[party_rank(args.crypten_provider or MULTIHOST_PROVIDER)])
    if args.party:  # the prompt and sampling are the client's alone: refused elsewhere before any link opens
        from .multihost_generation import check_party_inputs

        check_party_inputs(args)
    if args.tune_protocol and (args.bandwidth_mbps is not None or args.rtt_ms is not None
                               or (args.network or "lan") != "lan"):
        raise AeroError("--tune-protocol measures on bare loopback and prices the link: an emulated link "
                        "(--network wan, --bandwidth-mbps, --rtt-ms) cannot go with it")


def _prediction(gm, seq_len: int, weight_masks: str, settings: str | None = None, link: dict | None = None,
                provider: str = "tfp") -> dict | None:
    """The cost analyzer's crypten prediction (per query, and the offline setup; latency for the run's link,
    loopback where none was emulated), or None without the analyzer."""
    try:
        from aero_compile.cost import analyze
    except ImportError:
        return None
    from aero_compile.cost.latency import latency_prediction, run_network

    report = analyze(gm, profile="crypten", network=run_network(link), seq_len=seq_len, batch=1,
                     weight_masks=weight_masks, protocol_settings=settings, provider=provider)
    return {"rounds": int(report.rounds), "bytes": int(report.bytes),
            "offline": {"rounds": int(report.offline.rounds), "bytes": int(report.offline.bytes)},
            "by_op": {kind: {"rounds": int(c.rounds), "bytes": int(c.bytes), "latency_s": round(c.latency_s, 6)}
                      for kind, c in report.by_op.items()},
            **latency_prediction(report)}


def run(args: argparse.Namespace, graphs: dict, result, run) -> None:
    """Run ``graphs`` under CrypTen as ``run`` (targets.private.options.PrivateRun) says; print and record it."""
    # secure by default between hosts; a single-machine measurement keeps tfp (nothing leaves the machine)
    provider = args.crypten_provider or (MULTIHOST_PROVIDER if run.party else DEFAULT_PROVIDER)
    hosts = link_mode(multihost=run.party, tls=run.tls, insecure_link=run.insecure_link, loopback_tls=True)
    weight_masks = run.weight_masks
    settings = None  # CrypTen's defaults, unless --tune-protocol picks others
    if run.party and getattr(args, "generate", None):
        from .multihost_generation import run_generation_cli

        return run_generation_cli(args, graphs, result, run, provider)
    if run.party:
        from .multihost import run_as_party

        measured = run_as_party(graphs, seq_len=run.seq_len, provider=provider, timeout_s=run.timeout_s,
                                logits_out=run.logits_out, weight_masks=weight_masks, tls=run.tls,
                                insecure_link=run.insecure_link, prompt_ids=getattr(args, "prompt_token_ids", None))
        if not measured:  # the trusted third party deals triples and measures nothing
            print("trusted third party: served the run's Beaver triples")
            return
    elif args.tune_protocol:
        from .tuner import ACCURACY_TARGET, print_tuning, tune, tuning_record

        chosen, tried = tune(graphs, seq_len=run.seq_len, provider=provider, timeout_s=run.timeout_s,
                             weight_masks=weight_masks, network=run.link)
        result.report.protocol_tuning = tuning_record(chosen, tried, ACCURACY_TARGET, run.seq_len)
        print_tuning(chosen, tried, ACCURACY_TARGET)
        measured, settings = chosen.measured, chosen.cost_key
    else:
        from .runner import run_private

        measured = run_private(graphs, seq_len=run.seq_len, provider=provider, timeout_s=run.timeout_s,
                               weight_masks=weight_masks, link=run.emulated_link, tls=run.tls,
                               repetitions=run.repetitions)
    for name, gm in graphs.items():  # between hosts the owner's T follows the client's prompt: the run's T
        measured[name]["predicted"] = _prediction(gm, measured[name].get("seq_len", run.seq_len), weight_masks, settings, measured[name].get("link"), provider)
    attach_security(measured, security_block(engine="crypten", provider=provider, hosts=hosts))
    result.report.measured = measured
    print_measured(measured, provider)
    announce_security(measured)
    if not run.party:
        from aero_compile.targets.private.link.selection import describe_link

        print(describe_link(measured["after"]))


def print_measured(measured: dict, provider: str, console=None) -> None:
    """The measured table: per OpKind rounds/bytes/seconds before -> after, totals, prediction, error."""
    from rich.console import Console

    console = console or Console()
    before, after = measured["before"], measured["after"]
    pb, pa = before.get("predicted"), after.get("predicted")
    timed = bool(pb and pa and "latency_s" in pb)
    table = measured_table(measured, title=f"measured under CrypTen, 2 parties, T={before['seq_len']}, provider {provider}",
                           columns=("op", "rounds", "bytes (sent + received)", "seconds"), order_by="rounds",
                           skip_silent=True)
    console.print(table)
    console.print("bytes: as CrypTen's communicator counts them, a party's sent + received (each party's figure is "
                  "the whole two-party traffic); the table is per query")
    if before.get("weight_masks") == "per-model":
        ob, oa = before["offline"], after["offline"]
        line = (f"offline, once per model (weights masked once, W - B opened at setup): "
                f"{_pair(ob['rounds'], oa['rounds'])} rounds, {_pair(ob['bytes'], oa['bytes'])} bytes")
        if pb and pa:
            line += (f"; analyzer predicts {_pair(pb['offline']['rounds'], pa['offline']['rounds'])} rounds, "
                     f"{_pair(pb['offline']['bytes'], pa['offline']['bytes'])} bytes")
        console.print(line)
    console.print(f"provider {provider}: {PROVIDER_MEANING[provider]}")
    if timed:
        timing = before.get("timing", {})
        console.print(f"seconds: the online forward pass, {timing.get('statistic', 'median')} of "
                      f"{timing.get('repetitions', 1)} repetitions; predicted s: the analyzer's latency on "
                      f"{pb['network']['name']} (compute {pb['compute_s']:.3f} -> {pa['compute_s']:.3f} s, measured by "
                      "`aero-compile calibrate crypten --compute`)")
    for name in ("before", "after"):
        m = measured[name]
        if m.get("max_abs_error") is not None:
            positions = m["batch"] * m["seq_len"]
            resolvable = positions - m.get("near_tie_positions", 0)
            console.print(f"{name}: logits max abs error {m['max_abs_error']:.2e}, "
                          f"argmax agreement {m['argmax_agreement']:.1%} of {positions} positions; "
                          f"{m.get('argmax_agreement_resolvable', m['argmax_agreement']):.1%} of the {resolvable} "
                          "whose plaintext top-2 margin exceeds twice the error")
    if pb is None:
        console.print("predicted: the cost analyzer (aero_compile.cost.analyze) is not available")


def generate(gm, prompt_ids, new_tokens: int, args: argparse.Namespace, programs=None) -> dict:
    """``--run-private --generate N`` under CrypTen on this machine (private.engines: ``generation``)."""
    from .generation import generate_privately

    provider = args.crypten_provider or DEFAULT_PROVIDER
    run = generate_privately(gm, prompt_ids, new_tokens, provider=provider, weight_masks=args.weight_masks,
                             timeout_s=getattr(args, "party_timeout", None) or 300.0,
                             sampling=getattr(args, "sampling", None))
    from aero_compile.targets.private.security import PROVIDERS as SECURITY_NOTES

    return {**run, "note": SECURITY_NOTES["crypten", provider][1]}
