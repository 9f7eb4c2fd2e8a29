"""One party of a private run: join the others, share, run each graph under MPC, reveal to the client.

Rank 0 is the model owner (holds the weights), rank 1 the client (holds the token ids); with the
trusted-third-party provider, rank 2 (= WORLD_SIZE) is the dealer. With ``link`` (a ``MeshPlan``,
``link_plan``) the parties talk over our own links (``communicator``); without, CrypTen's gloo
communicator reads RANK, WORLD_SIZE, RENDEZVOUS and DISTRIBUTED_BACKEND from the environment
(``party_environment``).
"""

from __future__ import annotations

import os
import time

import torch
import torch.fx as fx

from aero_compile.errors import AeroError
from aero_compile.records import to_json
from aero_compile.targets.private.link.mesh import MeshPlan
from aero_compile.targets.private.party_watch import describe_party

from .compat import import_crypten, set_party_timeout
from .lowering import PrivateGraph, Stopwatch
from .protocol_settings import DEFAULT_SETTINGS, ProtocolSettings
from .weight_masks import DEALER_REQUESTS, DEFAULT_WEIGHT_MASKS, install_dealer_functions

OWNER, CLIENT = 0, 1
PARTIES = 2  # the MPC parties; a trusted third party, when used, joins as rank PARTIES
PROVIDERS = {"tfp": "TFP", "ttp": "TTP"}  # our option name -> crypten.cfg.mpc.provider
ROLE_NAMES = {OWNER: "model owner", CLIENT: "client", PARTIES: "trusted third party"}
ROLE_KEYS = {OWNER: "owner", CLIENT: "client", PARTIES: "dealer"}  # certificate names (``link.tls``)


def link_plan(rank: int, provider: str, addresses: dict[int, tuple[str, int]], *, listen=None, advertise=None,
              timeout_s: float = 60.0, tls=None) -> MeshPlan:
    """The links of ``rank`` in a run with ``provider`` (``addresses``: rank -> where to dial it)."""
    ranks = tuple(range(PARTIES + 1 if provider == "ttp" else PARTIES))
    return MeshPlan(rank=rank, ranks=ranks, roles={r: ROLE_KEYS[r] for r in ranks},
                    names={r: describe_party(r, ROLE_NAMES) for r in ranks}, addresses=dict(addresses),
                    listen=listen, advertise=advertise, timeout_s=timeout_s, tls=tls)


def party_environment(rank: int, rendezvous: str, backend: str = "gloo") -> dict[str, str]:
    """The variables CrypTen's communicator reads, for one party of a two-party run."""
    return {"RANK": str(rank), "WORLD_SIZE": str(PARTIES), "RENDEZVOUS": rendezvous,
            "DISTRIBUTED_BACKEND": backend}


def backstop_timeout(timeout_s: float) -> float:
    """gloo's own per-call timeout: far beyond --party-timeout, which the watchers of ``private.party_watch``
    apply to waiting alone (gloo cannot tell a peer that works from one that hangs)."""
    return max(10 * timeout_s, 600.0)


def _init_crypten(provider: str, timeout_s: float, settings: ProtocolSettings | None = None,
                  link: MeshPlan | None = None):
    crypten = import_crypten()
    set_party_timeout(crypten, backstop_timeout(timeout_s))
    if link is not None:  # our own links instead of gloo's (``communicator``)
        from .communicator import install

        install(link)
    (settings or DEFAULT_SETTINGS).apply(crypten)
    crypten.cfg.mpc.provider = PROVIDERS[provider]
    crypten.cfg.communicator.verbose = True  # count rounds and bytes
    return crypten


def _die_at_first_request(server) -> None:
    """Test hook: the dealer dies (as a crashed machine) when rank 0 first asks it for anything."""
    from crypten.mpc.provider.ttp_provider import TTP_FUNCTIONS

    for name in (*TTP_FUNCTIONS, *DEALER_REQUESTS):
        setattr(server, name, lambda self, *args, **kwargs: os._exit(3))


def zero_weights(gm: fx.GraphModule) -> fx.GraphModule:
    """Blank the parameters in place: the client knows the architecture, never the weights."""
    with torch.no_grad():
        for param in gm.parameters():
            param.zero_()
    return gm


def timed_forward(private: PrivateGraph, repetitions: int = 1):
    """(logits, measure, timing): the forward pass run ``repetitions`` times on the same shares and keys;
    the first run's logits (a copy: a later pass reuses the graph's CrypTensors), the measure of the run
    whose seconds are the median (rounds and bytes are the same every time)."""
    runs = []
    for index in range(max(1, repetitions)):
        output, measure = private.forward()
        runs.append((output.clone() if index == 0 and repetitions > 1 else output, measure))
    ranked = sorted(range(len(runs)), key=lambda i: runs[i][1].seconds)
    median = ranked[(len(runs) - 1) // 2]  # the lower median of an even count: a run that happened
    logits, measure = runs[0][0], runs[median][1]
    timing = {"repetitions": len(runs), "statistic": "median", "all_seconds": [round(m.seconds, 6) for _, m in runs]}
    return logits, measure, timing


def client_token_count(communicator, rank: int, own: int | None, from_prompt: bool, context: int | None,
                       new_tokens: int = 1) -> int:
    """The number of tokens the client shares, announced by the client over the typed wire (``wire_objects``,
    never a pickle): public, it fixes every shape. With a prompt the owner follows it (``own``: the
    owner's own figure, None when it has none); without, both must have been given the same
    ``--private-seq-len``. Checked against the model's ``context`` (with ``new_tokens`` generated)."""
    sent = {"tokens": int(own), "prompt": bool(from_prompt)} if rank == CLIENT else None
    received = communicator.broadcast_obj(sent, CLIENT)
    count = received.get("tokens") if isinstance(received, dict) else None
    if type(count) is not int or count < 1 or not isinstance(received.get("prompt"), bool):
        raise AeroError(f"the client announced {str(received)[:60]} as its token count: refused (a positive "
                        "count was expected)")
    if rank != CLIENT and own is not None and not received["prompt"] and count != own:
        raise AeroError(f"the client shares {count} tokens and this party was given --private-seq-len {own}: "
                        "give every party the same --private-seq-len (or the client a --prompt)")
    if context and count + new_tokens - 1 > context:
        what = f"the client's prompt of {count} tokens" + (f" and --generate {new_tokens}" if new_tokens > 1 else "")
        raise AeroError(f"{what} run past the model's context of {context}: the client must give a shorter prompt")
    return count


def run_party(graphs: dict[str, fx.GraphModule], input_ids: torch.Tensor | None, *, batch: int,
              seq_len: int, provider: str = "tfp", timeout_s: float = 60.0, fault: str | None = None,
              weight_masks: str = DEFAULT_WEIGHT_MASKS, settings: ProtocolSettings | None = None,
              repetitions: int = 1, link: MeshPlan | None = None, client_sets_seq_len: bool = False,
              from_prompt: bool = False) -> dict:
    """This process's share of a private run over ``graphs`` ({"before": gm, ...}); returns its figures.

    The client's result carries the revealed logits; the owner's does not. ``offline`` is what masking
    the weights once per model cost (``weight_masks.py``); ``forward`` is the per-query protocol.
    ``fault`` is a test hook: "exit-after-setup" makes this party die mid-run, as a crashed machine
    would (the dealer: at its first request); "sleep-after-setup:S" makes it work S seconds longer;
    "wait-forever-after-setup" makes it wait for a message no peer sends. ``repetitions``: the online
    forward pass runs that many times on the same shares (``timed_forward``). ``client_sets_seq_len``
    (between hosts): the client announces its token count first (``client_token_count``; ``from_prompt``:
    they are its own prompt, which the owner's T follows).
    """
    crypten = _init_crypten(provider, timeout_s, settings, link)
    rank = link.rank if link is not None else int(os.environ["RANK"])
    if rank == PARTIES:  # the dealer: serve Beaver triples until rank 0 says terminate
        install_dealer_functions()
        if fault == "exit-after-setup":
            _die_at_first_request(crypten.mpc.provider.TTPServer)
        crypten.mpc.provider.TTPServer()
        return {}
    crypten.init()
    if rank != OWNER:
        for gm in graphs.values():
            zero_weights(gm)
    communicator = crypten.communicator.get()
    if client_sets_seq_len:
        from aero_compile.graph_info import graph_info

        context = graph_info(next(iter(graphs.values()))).max_seq_len
        seq_len = client_token_count(communicator, rank, seq_len, from_prompt, context)
    results: dict[str, dict] = {}
    for name, gm in graphs.items():
        private = PrivateGraph(gm, crypten, owner=OWNER, client=CLIENT, provider=provider, weight_masks=weight_masks)
        with Stopwatch(communicator) as setup:
            private.share(input_ids if rank == CLIENT else None, batch, seq_len)
        with Stopwatch(communicator) as offline:
            private.mask_weights()
        if fault == "exit-after-setup":
            os._exit(3)
        if fault == "wait-forever-after-setup":  # a protocol bug: waits for a message nobody sends
            communicator.recv(torch.zeros(1), src=CLIENT if rank == OWNER else OWNER)
        if fault and fault.startswith("sleep-after-setup:"):
            time.sleep(float(fault.split(":", 1)[1]))  # slow but healthy: working, not waiting
        start = time.perf_counter()
        logits, measure, timing = timed_forward(private, repetitions)
        with Stopwatch(communicator) as reveal:
            plain = logits.get_plain_text(dst=CLIENT)
        results[name] = {
            "forward": to_json(measure),
            "setup": to_json(setup.measure),
            "offline": to_json(offline.measure),
            "reveal": to_json(reveal.measure),
            "wall_seconds": time.perf_counter() - start,
            "timing": timing,
            "logits": plain if rank == CLIENT else None,
            "seq_len": seq_len,
        }
    crypten.uninit()
    return results
