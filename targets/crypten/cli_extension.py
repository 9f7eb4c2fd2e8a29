"""``--run-private``: run the graph before and after the passes under CrypTen and report what it cost.

    aero-compile gpt2-tiny --passes all --run-private --private-seq-len 32
    aero-compile llama-tiny --run-private --crypten-provider ttp --report-json r.json

Adds ``"measured": {"before": {...}, "after": {...}}`` to the JSON report (the client's rounds, bytes
and forward wall time, the logits error) and prints them next to the cost analyzer's
``crypten`` prediction where the analyzer is available.
"""

from __future__ import annotations

import argparse

from aero_compile.errors import AeroError
from aero_compile.graph_info import graph_info
from aero_compile.report import format_ratio
from aero_compile.targets.private.measured import before_after as _pair

from .party import PROVIDERS
from .weight_masks import DEFAULT_WEIGHT_MASKS

PROVIDER_MEANING = {
    "tfp": "trusted first party: each party makes its own Beaver triples (fast, NOT secure)",
    "ttp": "trusted third party: a separate dealer process makes the triples (secure if it does not collude)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("private execution (CrypTen)")
    group.add_argument("--run-private", action="store_true",
                       help="run the model before and after the passes between two CrypTen parties on this machine "
                            "and report measured rounds, bytes, seconds and logits error")
    group.add_argument("--crypten-provider", choices=sorted(PROVIDERS), default="tfp",
                       help="where Beaver triples come from: tfp (default; generated locally, not secure) or ttp "
                            "(a trusted third-party process)")
    group.add_argument("--private-seq-len", type=int,
                       help="tokens in the private run (default: --seq-len); MPC time grows fast with it")
    group.add_argument("--party-timeout", type=float, default=120.0,
                       help="seconds a party may wait for its peers (to connect, or in silence while no peer works) "
                            "before the run fails; work itself is never timed out (default 120)")
    group.add_argument("--party", action="store_true",
                       help="multi-host: be one party (RANK, WORLD_SIZE, RENDEZVOUS, DISTRIBUTED_BACKEND from the "
                            "environment) instead of starting both on this machine")
    group.add_argument("--tls", metavar="DIR",
                       help="multi-host (--party): mutual TLS between the parties with DIR/ca.pem and DIR/<role>/cert.pem, "
                            "key.pem (roles owner, client, dealer; see docs/link.md)")
    group.add_argument("--insecure-link", action="store_true",
                       help="multi-host (--party) without --tls: plaintext, unauthenticated links (anyone on the path "
                            "reads the shares)")
    group.add_argument("--private-logits-out", help="on the multi-host client (--party with RANK=1, or --spu-party 1): save the "
                            "revealed logits and the tokens (torch.save)")
    group.add_argument("--tune-protocol", action="store_true",
                       help="with --run-private: try CrypTen settings (fixed-point bits, exp/reciprocal/inv_sqrt "
                            "iterations, max method), cheapest by the analyzer first, and keep the cheapest whose "
                            "argmax agreement with plaintext reaches 99%% before and after the passes")


def _prediction(gm, seq_len: int, weight_masks: str, settings: str | None = None) -> dict | None:
    """The cost analyzer's crypten prediction (per query, and the offline setup), or None without the analyzer."""
    try:
        from aero_compile.cost import analyze
    except ImportError:
        return None
    report = analyze(gm, profile="crypten", seq_len=seq_len, batch=1, weight_masks=weight_masks,
                     protocol_settings=settings)
    return {"rounds": int(report.rounds), "bytes": int(report.bytes),
            "offline": {"rounds": int(report.offline.rounds), "bytes": int(report.offline.bytes)},
            "by_op": {kind: {"rounds": int(c.rounds), "bytes": int(c.bytes)} for kind, c in report.by_op.items()}}


def apply(args: argparse.Namespace, result) -> None:
    if args.tune_protocol and not args.run_private:
        raise AeroError("--tune-protocol tunes a private run: add --run-private")
    if not (args.run_private or args.party) or getattr(args, "engine", "crypten") != "crypten":
        return  # --engine spu: targets/spu/cli_extension.py runs it
    protocol = getattr(args, "protocol", None)  # the cost analyzer's option, where it is installed
    if protocol not in (None, "crypten"):
        raise AeroError(f"--run-private runs CrypTen: use --protocol crypten, not {protocol}")
    seq_len = args.private_seq_len if args.private_seq_len is not None else args.seq_len
    if seq_len < 1:
        raise AeroError(f"--private-seq-len must be a positive integer, got {seq_len}")
    graph_info(result.before).check_seq_len(seq_len, "--private-seq-len")
    if args.party_timeout <= 0:
        raise AeroError(f"--party-timeout must be positive, got {args.party_timeout}")
    graphs = {"before": result.before, "after": result.graph_module}
    weight_masks = getattr(args, "weight_masks", DEFAULT_WEIGHT_MASKS)  # the cost extension's flag
    settings = None  # CrypTen's defaults, unless --tune-protocol picks others
    if args.tune_protocol and args.party:
        raise AeroError("--tune-protocol runs the parties itself, on this machine: drop --party")
    from aero_compile.targets.private.link.options import describe_link, refuse_on_multihost, requested_link

    link = requested_link(getattr(args, "network", None), getattr(args, "bandwidth_mbps", None),
                          getattr(args, "rtt_ms", None))
    if args.party:
        refuse_on_multihost(link, "--party")
    if link and args.tune_protocol:
        raise AeroError("--tune-protocol measures on bare loopback: drop --network/--bandwidth-mbps/--rtt-ms")
    if args.party:
        from .multihost import run_as_party

        measured = run_as_party(graphs, seq_len=seq_len, provider=args.crypten_provider,
                                timeout_s=args.party_timeout, logits_out=args.private_logits_out,
                                weight_masks=weight_masks, tls=args.tls, insecure_link=args.insecure_link)
        if not measured:  # the trusted third party deals triples and measures nothing
            print("trusted third party: served the run's Beaver triples")
            return
    elif args.tune_protocol:
        from .tuner import ACCURACY_TARGET, print_tuning, tune, tuning_record

        chosen, tried = tune(graphs, seq_len=seq_len, provider=args.crypten_provider, timeout_s=args.party_timeout,
                             weight_masks=weight_masks, network=getattr(args, "network", None) or "lan")
        result.report.protocol_tuning = tuning_record(chosen, tried, ACCURACY_TARGET, seq_len)
        print_tuning(chosen, tried, ACCURACY_TARGET)
        measured, settings = chosen.measured, chosen.cost_key
    else:
        from .runner import run_private

        measured = run_private(graphs, seq_len=seq_len, provider=args.crypten_provider, timeout_s=args.party_timeout,
                               weight_masks=weight_masks, link=link, tls=args.tls)
    for name, gm in graphs.items():
        measured[name]["predicted"] = _prediction(gm, seq_len, weight_masks, settings)
    result.report.measured = measured
    print_measured(measured, args.crypten_provider)
    print(describe_link(measured["after"]))


def print_measured(measured: dict, provider: str, console=None) -> None:
    """The measured table: per OpKind rounds/bytes/seconds before -> after, totals, prediction, error."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    before, after = measured["before"], measured["after"]
    table = Table(title=f"measured under CrypTen, 2 parties, T={before['seq_len']}, provider {provider}")
    for column in ("op", "rounds", "bytes (sent + received)", "seconds"):
        table.add_column(column, justify="left" if column == "op" else "right")
    kinds = sorted(set(before["by_op"]) | set(after["by_op"]), key=lambda k: -before["by_op"].get(k, {}).get("rounds", 0))
    for kind in kinds:
        b, a = before["by_op"].get(kind, {}), after["by_op"].get(kind, {})
        if not (b.get("rounds") or a.get("rounds") or b.get("bytes") or a.get("bytes")):
            continue  # local ops: no communication
        table.add_row(kind, _pair(b.get("rounds", 0), a.get("rounds", 0)), _pair(b.get("bytes", 0), a.get("bytes", 0)),
                      _pair(b.get("seconds", 0.0), a.get("seconds", 0.0), "{:.3f}"))
    table.add_row("total", _pair(before["rounds"], after["rounds"]), _pair(before["bytes"], after["bytes"]),
                  _pair(before["seconds"], after["seconds"], "{:.3f}"), style="bold")
    table.add_row("saving", format_ratio(before["rounds"], after["rounds"]),
                  format_ratio(before["bytes"], after["bytes"]), format_ratio(before["seconds"], after["seconds"]))
    pb, pa = before.get("predicted"), after.get("predicted")
    if pb and pa:
        table.add_row("analyzer predicts", _pair(pb["rounds"], pa["rounds"]), _pair(pb["bytes"], pa["bytes"]), "")
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
