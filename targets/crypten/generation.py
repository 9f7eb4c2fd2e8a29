"""Private generation under CrypTen: prefill, then decode steps, in one session.

    from aero_compile.targets.crypten.generation import generate_privately
    result = generate_privately(gm, prompt_ids, new_tokens=4)   # result["tokens"], result["decode"], ...

On this machine ``generate_privately`` starts the parties; between hosts each party calls
``run_generation_party`` itself (``multihost_generation``): the same session code either way.

Both parties derive the prefill and decode-step programs from the same graph (``aero_compile.generation``).
The owner's values (weights, and what is computed from weights alone) are secret-shared once per
session and, with weights masked per model, masked once; every program reuses them by node name (the
programs keep the names of the graph they come from). The K/V cache stays secret-shared between steps
(the ``present`` CrypTensors of one step are the ``past`` of the next) and is never opened; with weights
masked per model, each cached row is also masked once, as it appears (only ``row - mask`` is opened, once),
so that a step's attention products open their other factor and the new rows only (``cache_masks.py``). After each
step only the client opens the new position's logits, picks the token in plaintext (greedy, or sampled:
``generation.sampling``) and secret-shares it (one-hot) as the next input; the owner sees shapes only.
"""

from __future__ import annotations

import os
import time

import torch
import torch.fx as fx
import torch.nn.functional as F

from aero_compile.errors import AeroError
from aero_compile.generation.programs import depends_on_step_values
from aero_compile.generation.sampling import Sampling
from aero_compile.graph_info import graph_info
from aero_compile.records import to_json
from aero_compile.secrecy import cache_factors, fixed_weights
from aero_compile.ops import classify_node
from aero_compile.targets.private import processes
from aero_compile.targets.private.graph import owner_shares
from aero_compile.targets.private.norm_scaling import inv_sqrt_scales, owner_calibration_ids
from aero_compile.targets.private.portable import PortableGraphs

from .cache_masks import RowMaskedFactor, install_cache_dealer_functions
from .lowering import PrivateGraph, Stopwatch
from .party import (CLIENT, OWNER, PARTIES, PROVIDERS, ROLE_NAMES, _init_crypten, backstop_timeout, client_token_count,
                    link_plan, zero_weights)
from .weight_masks import DEFAULT_WEIGHT_MASKS, install_dealer_functions, mask_weight


class _SessionValues:
    """What is shared once per session, by node name: owner values, owner inverses, masked weights, scales."""

    def __init__(self):
        self.owned: dict[str, object] = {}
        self.inverses: dict[str, object] = {}
        self.masked: dict[str, object] = {}
        self.scales: dict[str, float] | None = None
        self.cache_masks: dict[str, object] = {}  # attention product name -> its cached factor's CacheRowMasks


class _PrivateStep(PrivateGraph):
    """One program of the generation: its public values at this step's shapes, the session's shares."""

    def share_step(self, session: _SessionValues, one_hot, past: list, shapes: dict, rows: int, batch: int) -> None:
        self.shapes = shapes
        self.session = session
        # with weights masked once, the K/V cache's rows are too, as they appear (cache_masks.py)
        self.cached = cache_factors(self.gm, self.secrecy, shapes) if self.weight_masks == "per-model" else {}
        self.plain.update(self.split.plain_values(batch, rows, shapes))
        values, inverses = owner_shares(self.gm, self.secrecy, self.plain)
        for node, value in values.items():  # shared the first time a program needs it, then reused
            self.secret[node] = self._session_share(session.owned, node, value)
        for node, value in inverses.items():
            self.inverses[node] = self._session_share(session.inverses, node, value)
        self.scales = session.scales or {}
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        self.secret[placeholders[0]] = one_hot
        for node, value in zip(placeholders[1:], past):
            self.secret[node] = value

    def _session_share(self, cache: dict, node: fx.Node, value):
        """Share once per session what depends on the weights alone; share again per step what also
        depends on the step's public values (a position-table row: the owner's, but for this position)."""
        if depends_on_step_values(node, self.secrecy):
            return self._share_owned(value)
        if node.name not in cache:
            cache[node.name] = self._share_owned(value)
        return cache[node.name]

    def mask_step_weights(self, session: _SessionValues) -> None:
        if self.weight_masks != "per-model":
            return
        for node in self.gm.graph.nodes:
            for weight in fixed_weights(node, classify_node(self.gm, node), self.secrecy, self.shapes):
                if depends_on_step_values(weight, self.secrecy):
                    self.masked[weight] = mask_weight(self.secret[weight], self.provider)
                    continue
                if weight.name not in session.masked:
                    session.masked[weight.name] = mask_weight(self.secret[weight], self.provider)
                self.masked[weight] = session.masked[weight.name]

    def cache_factor(self, node: fx.Node, args) -> tuple[int, RowMaskedFactor] | None:
        """(argument index, that factor as the dispatch's RowMaskedFactor) of an attention product reading the
        cache, else None. The masks live in the session by product name: the prefill's and every decode
        step's product of one layer share them (the programs keep the graph's names)."""
        factor = self.cached.get(node)
        if factor is None:
            return None

        def keep(masks, name=node.name):
            self.session.cache_masks[name] = masks

        return factor.index, RowMaskedFactor(args[factor.index], self.session.cache_masks.get(node.name), factor.dim,
                                             factor.past_rows, self.provider, keep)

    def presents(self) -> list:
        output = next(n for n in self.gm.graph.nodes if n.op == "output")
        return [self.secret[node] for node in output.args[0][1:]]


def run_generation_party(graphs: dict[str, fx.GraphModule], prompt_ids: torch.Tensor | None, *,
                         new_tokens: int, provider: str = "tfp",
                         weight_masks: str = DEFAULT_WEIGHT_MASKS, timeout_s: float = 120.0, link=None,
                         sampling: Sampling | None = None, on_token=None) -> dict:
    """This process's share of one private generation per graph ({name: result}), in one CrypTen session.

    ``prompt_ids`` [1, P] is the client's (None elsewhere); the client announces P over the typed wire
    (``party.client_token_count``): the owner learns it there. ``link``: our own links
    between hosts (``party.link_plan``); None: CrypTen's gloo from the environment (one machine).
    ``sampling``: how the client picks tokens (greedy by default). ``on_token(name, step, token)`` is
    called on the client as each token is picked."""
    crypten = _init_crypten(provider, timeout_s, link=link)
    rank = link.rank if link is not None else int(os.environ["RANK"])
    if rank == PARTIES:  # the dealer: serve Beaver triples (and weight masks) until rank 0 says terminate
        install_dealer_functions()
        install_cache_dealer_functions()
        crypten.mpc.provider.TTPServer()
        return {}
    crypten.init()
    communicator = crypten.communicator.get()
    first = next(iter(graphs.values()))
    own = int(prompt_ids.shape[1]) if rank == CLIENT else None
    prompt_tokens = client_token_count(communicator, rank, own, True, graph_info(first).max_seq_len, new_tokens)
    results = {}
    for name, gm in graphs.items():
        if rank != OWNER:
            zero_weights(gm)
        pick = (sampling or Sampling()).picker() if rank == CLIENT else None
        emit = (lambda step, token, name=name: on_token(name, step, token)) if on_token else None
        results[name] = _generate_session(crypten, gm, prompt_ids if rank == CLIENT else None, rank=rank,
                                          prompt_tokens=prompt_tokens, new_tokens=new_tokens, provider=provider,
                                          weight_masks=weight_masks, pick=pick, emit=emit)
    crypten.uninit()
    return results


def _generate_session(crypten, gm: fx.GraphModule, prompt_ids, *, rank: int, prompt_tokens: int, new_tokens: int,
                      provider: str, weight_masks: str, pick, emit) -> dict:
    """Prefill, then decode steps over one graph: owner values shared (and weights masked) once."""
    from aero_compile.generation import derive_programs
    from aero_compile.generation.pricing import SymbolicShapes, _decode_inputs

    vocab = graph_info(gm).vocab_size
    programs = derive_programs(gm)
    decode_shapes = SymbolicShapes(programs.decode, _decode_inputs(programs, 1))
    prefill_shapes = SymbolicShapes(programs.prefill, [((1, None), torch.long)])
    communicator = crypten.communicator.get()
    session = _SessionValues()
    scales = None
    if rank == OWNER:  # the owner calibrates norms on tokens of its own choosing, never the client's
        scales = inv_sqrt_scales(programs.prefill, owner_calibration_ids(vocab, 1, prompt_tokens))
    session.scales = communicator.broadcast_obj(scales, OWNER)

    def share_tokens(ids: torch.Tensor | None, rows: int):
        one_hot = F.one_hot(ids, vocab).float() if rank == CLIENT else torch.zeros(1, rows, vocab)
        return crypten.cryptensor(one_hot, src=CLIENT)

    steps, tokens, logits_seen, past = [], [], [], []
    ids = prompt_ids if rank == CLIENT else None
    for step in range(new_tokens):
        program = programs.prefill if step == 0 else programs.decode
        rows = prompt_tokens if step == 0 else 1
        context = prompt_tokens + step
        shapes = prefill_shapes.at(rows) if step == 0 else decode_shapes.at(context - 1)
        private = _PrivateStep(program, crypten, owner=OWNER, client=CLIENT, provider=provider, weight_masks=weight_masks)
        with Stopwatch(communicator) as setup:
            private.share_step(session, share_tokens(ids, rows), past, shapes, rows, 1)
            private.mask_step_weights(session)
        logits, measure = private.forward()
        past = private.presents()  # stays secret-shared: the next step's past
        with Stopwatch(communicator) as reveal:
            plain = logits.get_plain_text(dst=CLIENT)
        if rank == CLIENT:  # only the client holds the logits: it picks the token in plaintext
            last = plain[0, -1]
            token = pick(last)
            tokens.append(token)
            logits_seen.append(last)
            ids = torch.tensor([[token]])
            if emit:
                emit(step, token)
        steps.append({"context": context, "rounds": measure.rounds, "bytes": measure.bytes,
                      "seconds": measure.seconds, "by_op": to_json(measure.by_op), "setup": to_json(setup.measure),
                      "reveal": to_json(reveal.measure)})
    return {"steps": steps, "prompt_tokens": prompt_tokens, "tokens": tokens if rank == CLIENT else None,
            "logits": torch.stack(logits_seen) if rank == CLIENT else None}


def _party_main(rank, link, graphs: PortableGraphs, prompt_ids, options) -> dict:
    torch.set_num_threads(1)
    results = run_generation_party(graphs.graphs, prompt_ids if rank == CLIENT else None, link=link, **options)
    return results.get("model", {})


def generate_privately(gm: fx.GraphModule, prompt_ids: torch.Tensor, new_tokens: int, *, provider: str = "tfp",
                       weight_masks: str = DEFAULT_WEIGHT_MASKS, timeout_s: float = 300.0,
                       sampling: Sampling | None = None) -> dict:
    """Generation of ``new_tokens`` after ``prompt_ids`` [1, P] between two CrypTen parties on this machine
    (greedy unless ``sampling`` says otherwise)."""
    if provider not in PROVIDERS:
        raise AeroError(f"unknown CrypTen provider '{provider}': use one of {', '.join(PROVIDERS)}")
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1:
        raise AeroError("private generation takes one prompt: token ids of shape [1, P]")
    options = {"new_tokens": new_tokens, "provider": provider, "weight_masks": weight_masks,
               "timeout_s": timeout_s, "sampling": sampling}
    from .runner import PRELOAD, START_METHOD, free_loopback_ports

    ranks = range(PARTIES + 1 if provider == "ttp" else PARTIES)
    start = time.perf_counter()
    # our own links on loopback, as a forward run's (``runner``): the same communicator the compute profile is
    # timed on (over gloo, every round of a step took about twice as long)
    listening = free_loopback_ports(len(ranks) - 1)
    portable = PortableGraphs({"model": gm})
    parties = [processes.Party(ROLE_NAMES[rank], _party_main,
                               (rank, link_plan(rank, provider, listening, listen=listening.get(rank),
                                                advertise=listening.get(rank), timeout_s=backstop_timeout(timeout_s)),
                                portable, prompt_ids, options))
               for rank in ranks]
    results = processes.launch_parties(parties, timeout_s=timeout_s, prefix="aero-crypten-gen-",
                                       start_method=START_METHOD, preload=PRELOAD)
    client = results[CLIENT]
    return {"tokens": client["tokens"], "logits": client["logits"], "decode": client["steps"],
            "owner_steps": results[OWNER]["steps"], "seconds": time.perf_counter() - start, "provider": provider}
