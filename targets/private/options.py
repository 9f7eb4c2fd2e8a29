"""The private-run options every engine shares, checked before anything runs, then dispatched to ENGINES.

    aero-compile gpt2-tiny --run-private --private-seq-len 8                 # CrypTen (the default engine)
    aero-compile gpt2-tiny --run-private --engine spu --private-seq-len 8    # SPU

This module is the ``aero-compile`` extension of the private layer (``cli.EXTENSIONS`` lists it once):

* ``add_arguments(parser)``: the shared options (:data:`SHARED_OPTIONS`), then each registered
  engine's own group (``ENGINES[name].cli_module().add_arguments``);
* ``check(args)``: before the model is even loaded: every shared option's range, the options that go
  together, the analyzer profile against the engine's, and the chosen engine's ``check(args)``;
* ``check_graph(args, gm)``: right after capture, before any pass: what needs the graph (the context);
* ``apply(args, result)``: after the passes: builds a :class:`PrivateRun` and calls the chosen
  engine's ``run(args, graphs, result, run)``.

A shared option is added in ONE place: a :class:`SharedOption` in :data:`SHARED_OPTIONS` (flag, argparse
keywords, and ``check``: a function of the value returning what is wrong, or None), plus, when engines
need it, a field of :class:`PrivateRun` filled in :func:`private_run`. Its check then runs before
capture with every other; a check that needs the graph goes in :func:`check_graph`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Callable

from aero_compile.errors import AeroError

from .engines import DEFAULT_ENGINE, ENGINES, engine


@dataclass(frozen=True)
class SharedOption:
    """One option of every private run: its flag, its argparse keywords, and its check."""

    flag: str
    keywords: dict = field(default_factory=dict)
    check: Callable[[object], str | None] | None = None  # the value -> what is wrong with it, or None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def _positive_int(value) -> str | None:
    return None if value is None or value >= 1 else f"must be a positive integer, got {value}"


def _positive_seconds(value) -> str | None:
    return None if value > 0 and math.isfinite(value) else f"must be a positive number of seconds, got {value:g}"


SHARED_OPTIONS: list[SharedOption] = [
    SharedOption("--run-private", dict(
        action="store_true",
        help="run the model before and after the passes between MPC parties on this machine (--engine) and report "
             "measured rounds, bytes, seconds and logits error")),
    SharedOption("--engine", dict(
        choices=tuple(ENGINES), default=DEFAULT_ENGINE,
        help=f"the MPC engine of --run-private: {', '.join(ENGINES)} (default {DEFAULT_ENGINE}); each engine's own "
             "options are in its group below")),
    SharedOption("--private-seq-len", dict(
        type=int, help="tokens in the private run (default: --seq-len); MPC time grows fast with it"),
        check=_positive_int),
    SharedOption("--private-repetitions", dict(
        type=int, default=3,
        help="online forward passes timed per graph on the same shares; seconds is their median (default 3: "
             "the timing protocol the report states; 1 when only rounds, bytes and logits matter)"),
        check=lambda value: _positive_int(value) or (None if value <= 100 else f"must be at most 100, got {value}")),
    SharedOption("--party-timeout", dict(
        type=float, default=120.0,
        help="seconds a party may wait for its peers (to connect, or in silence while no peer works) before the run "
             "fails; work itself is never timed out (default 120)"),
        check=_positive_seconds),
    SharedOption("--party", dict(
        action="store_true",
        help="multi-host: be one party (RANK, WORLD_SIZE, RENDEZVOUS, DISTRIBUTED_BACKEND from the environment) "
             "instead of starting both on this machine")),
    SharedOption("--tls", dict(
        metavar="DIR",
        help="multi-host: mutual TLS on every link with the certificates in DIR (aero-compile keys DIR); a peer is "
             "accepted only with the CA's certificate for its role. A run between hosts needs --tls or "
             "--insecure-link (docs/security.md)")),
    SharedOption("--insecure-link", dict(
        action="store_true",
        help="multi-host without --tls: plaintext, unauthenticated links (anyone on the path sees every message, "
             "anyone who reaches a port can take a party's place)")),
    SharedOption("--private-logits-out", dict(
        help="on the multi-host client (--party with RANK=1, or --spu-party 1): save the revealed logits and the "
             "tokens (torch.save)")),
]

# Files a private run writes: the CLI checks them before any work and stages them (cli.OutputPlan).
OUTPUT_OPTIONS = {"private_logits_out": "--private-logits-out"}


@dataclass(frozen=True)
class PrivateRun:
    """What every engine's run is given, resolved and checked from the shared options."""

    seq_len: int  # tokens in the private run
    timeout_s: float  # --party-timeout
    party: bool  # --party: this process is one party of a multi-host run
    logits_out: str | None  # --private-logits-out (a staged path)
    weight_masks: str  # per-model or per-query (the analysis and the run agree)
    link: object  # network.Link: the link the analysis prices (presets, --bandwidth-mbps, --rtt-ms)
    emulated_link: object = None  # link.spec.LinkSpec: the link the parties run through; None: bare loopback
    tls: str | None = None  # --tls DIR: a keys folder (targets/private/keys.py)
    insecure_link: bool = False  # --insecure-link: a multi-host run without TLS, knowingly
    repetitions: int = 3  # --private-repetitions: timed online passes per graph (the median is reported)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("private execution (--run-private, every engine)")
    for option in SHARED_OPTIONS:
        group.add_argument(option.flag, **option.keywords)
    for registered in ENGINES.values():
        registered.cli_module().add_arguments(parser)


def requested(args: argparse.Namespace) -> bool:
    """Whether this command runs the model privately (on this machine, or as one multi-host party)."""
    return bool(args.run_private or args.party)


def check(args: argparse.Namespace) -> None:
    """Every private-run option that needs no graph, before anything runs (one-line AeroError)."""
    for option in SHARED_OPTIONS:
        problem = option.check(getattr(args, option.dest)) if option.check else None
        if problem:
            raise AeroError(f"{option.flag} {problem}")
    chosen = engine(args.engine)
    for name, other in ENGINES.items():  # an option of an engine that does not run would be ignored silently
        if name != chosen.name:
            given = other.cli_module().given_options(args)
            if given:
                raise AeroError(f"{given[0]} is an option of --engine {name}, but this run's engine is {chosen.name}")
    if args.engine != DEFAULT_ENGINE and not args.run_private:
        raise AeroError(f"--engine {args.engine} selects the engine of --run-private: add --run-private")
    chosen.cli_module().check(args)
    if not requested(args):
        return
    _check_link(args)
    from aero_compile.cost.cli_extension import requested_profile

    profile = requested_profile(args)
    if profile is not None and profile not in chosen.profiles:
        raise AeroError(f"--run-private runs {chosen.title}: use --protocol {chosen.cli_module().profile_for(args)}, "
                        f"not {profile}")


def _check_link(args: argparse.Namespace) -> None:
    """The emulated link (``link/``), before anything runs: it cannot stand between hosts."""
    from .link.selection import refuse_on_multihost, requested_link

    emulated = requested_link(args.network, args.bandwidth_mbps, args.rtt_ms)  # AeroError if it cannot be held
    multihost_flag = engine(args.engine).cli_module().multihost_flag(args)  # each engine says how it joins hosts
    if multihost_flag:
        refuse_on_multihost(emulated, multihost_flag)
    # --tls / --insecure-link are checked by each engine (private.security.link_mode): which links it can secure


def _seq_len(args: argparse.Namespace) -> int:
    return args.private_seq_len if args.private_seq_len is not None else args.seq_len


def check_graph(args: argparse.Namespace, gm) -> None:
    """Right after capture, before any pass: the private run's tokens fit the model's context."""
    if requested(args):
        from aero_compile.graph_info import graph_info

        graph_info(gm).check_seq_len(_seq_len(args), "--private-seq-len")


def private_run(args: argparse.Namespace) -> PrivateRun:
    from aero_compile.network import link_from_args

    from .link.selection import requested_link

    return PrivateRun(seq_len=_seq_len(args), timeout_s=args.party_timeout, party=args.party,
                      logits_out=args.private_logits_out, weight_masks=args.weight_masks, link=link_from_args(args),
                      emulated_link=requested_link(args.network, args.bandwidth_mbps, args.rtt_ms), tls=args.tls,
                      insecure_link=args.insecure_link, repetitions=args.private_repetitions)


def apply(args: argparse.Namespace, result) -> None:
    """Run the graph before and after the passes under the chosen engine (it prints and records the run)."""
    if not requested(args):
        return
    graphs = {"before": result.before, "after": result.graph_module}
    engine(args.engine).cli_module().run(args, graphs, result, private_run(args))
