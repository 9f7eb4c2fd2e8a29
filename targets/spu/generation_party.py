"""One SPU party of a private generation: a session of steps whose K/V cache never leaves the runtime.

Runs in a spawned process (nothing here needs torch). Every party is given the steps' compiled code and
the session plan (which owner variables each step shares); the owner also its arrays, the client its
prompt's one-hot. Per step: the client shares the tokens' one-hot, the owner the variables the step
needs first, the runtime runs the step, and its ``present_i`` outputs are renamed ``past_i`` in place:
this party's own shares, kept for the next step, never sent. The others send the client their share of
the logits; the client reconstructs them, picks the greedy token and shares its one-hot next.

The owner records what it receives in the clear (``view``: the header and sizes of every message that
reaches it outside the runtime; it reconstructs nothing), so that a test can check it does not depend
on the prompt.
"""

from __future__ import annotations

import hashlib

import numpy as np

from aero_compile.targets.private.processes import Party, launch_parties
from aero_compile.targets.private.wire import decode

from .config import CLIENT, OWNER, ROLE_NAMES, parties, runtime_config
from .party import _peer, close_link, connect, exchange_shares, free_addresses, pack_shares, unpack_shares
from .profiling import parse_executions
from .session import PartySession, warm_up_program


class _RecordingLink:
    """The owner's link, recording every message it receives outside the runtime (the runtime's own
    protocol messages never pass here): the header and each array's size, all it shows in the clear
    besides share bytes, which are uniformly random."""

    def __init__(self, link, view: list):
        self._link, self._view = link, view

    def __getattr__(self, name):
        return getattr(self._link, name)

    def recv(self, peer: int) -> bytes:
        data = self._link.recv(peer)
        header, arrays = decode(data, peer=_peer(peer))
        self._view.append({"from": peer, "header": header, "arrays": [int(a.size) for a in arrays],
                           "meta": [hashlib.sha256(a.tobytes()).hexdigest()[:16] for a in arrays[:1]]})
        return data


def generation_party_main(rank: int, addresses: list[str], plan: list[dict], arrays: dict | None,
                          prompt_one_hot: np.ndarray | None, protocol: str, timeout_s: float,
                          sampling=None) -> dict:
    """This party's whole generation session; the client's result carries the tokens and logits (the client
    picks each token with ``sampling``, an ``aero_compile.generation.sampling.Sampling``: greedy when None)."""
    native = connect(rank, addresses, timeout_s)  # the runtime takes the native link itself
    result = generation_session(native, plan, arrays, prompt_one_hot, protocol, sampling=sampling)
    close_link(native)
    return result


def generation_session(native, plan: list[dict], arrays: dict | None, prompt_one_hot: np.ndarray | None,
                       protocol: str, sampling=None, on_token=None) -> dict:
    """One generation session over an open link (``native``, rank ``native.rank``), the link left open;
    the client picks each token with ``sampling`` and calls ``on_token(step, token)`` as it does
    (``multihost_generation``)."""
    import torch
    from spu import api, libspu

    from aero_compile.generation.sampling import Sampling

    rank = native.rank
    pick = (sampling or Sampling()).picker()

    view: list = []
    link = _RecordingLink(native, view) if rank == OWNER else native
    config = runtime_config(protocol)
    io = api.Io(link.world_size, config)
    session = PartySession(native, config)
    runtime = session.runtime
    warm_executable, warm_inputs = warm_up_program()
    warm_shares = exchange_shares(link, io, warm_inputs if rank == OWNER else [], OWNER, len(warm_inputs))
    session.run(warm_executable, warm_shares)
    tokens, logits_seen = [], []
    one_hot = prompt_one_hot
    for step in plan:
        executable = libspu.Executable()
        executable.ParseFromString(step["code"])
        token_shares = exchange_shares(link, io, [one_hot] if rank == CLIENT else [], CLIENT, 1)
        owned = step["session"] + step["step"]
        owner_shares = exchange_shares(link, io, [arrays[n] for n in owned] if rank == OWNER else [], OWNER, len(owned))
        runtime.set_var("tokens", token_shares[0])
        for name, share in zip(owned, owner_shares):
            runtime.set_var(name, share)
        runtime.run(executable)
        logits = runtime.get_var("logits")
        if rank == CLIENT:
            others = {peer: unpack_shares(link.recv(peer), _peer(peer), 1)[0]
                      for peer in range(link.world_size) if peer != CLIENT}
            plain = io.reconstruct([logits if r == CLIENT else others[r] for r in range(link.world_size)])
            last = np.asarray(plain, np.float32).reshape(-1, plain.shape[-1])[-1]
            token = pick(torch.from_numpy(last))
            tokens.append(token)
            logits_seen.append(last)
            if on_token is not None:
                on_token(len(tokens) - 1, token)
            one_hot = np.zeros((1, 1, last.shape[0]), np.float32)
            one_hot[0, 0, token] = 1.0
        else:
            link.send(CLIENT, pack_shares([logits]))
        for i in range(step["pasts"]):
            runtime.del_var(f"past_{i}")
        for i in range(step["presents"]):  # the cache stays this party's share, in its runtime
            runtime.set_var(f"past_{i}", runtime.get_var(f"present_{i}"))
            runtime.del_var(f"present_{i}")
        for name in ("tokens", "logits", *step["step"]):
            runtime.del_var(name)
    return {"tokens": tokens, "logits": logits_seen} if rank == CLIENT else {"view": view}


def run_generation_parties(plan: list[dict], arrays: dict, prompt_one_hot: np.ndarray, *, protocol: str,
                           timeout_s: float, sampling=None) -> tuple[dict, dict, list[dict]]:
    """Every party as a process on loopback: (client's result, owner's result, owner's profiles: warm-up, steps)."""
    from aero_compile.errors import AeroError

    world = parties(protocol)
    addresses = free_addresses(world)
    members = [Party(ROLE_NAMES.get(rank, f"rank {rank}"), generation_party_main,
                     (rank, addresses, plan, arrays if rank == OWNER else None,
                      prompt_one_hot if rank == CLIENT else None, protocol, timeout_s,
                      sampling if rank == CLIENT else None), output_log=True)
               for rank in range(world)]
    # spawned, as spu.party's runs: SPU's native thread pools do not survive a fork
    results = launch_parties(members, timeout_s=timeout_s, deadline_s=max(3 * timeout_s + 30, 3600),
                             prefix="aero-spu-gen-", start_method="spawn")
    profiles = parse_executions(results[OWNER]["log"])
    if len(profiles) != len(plan) + 1:
        raise AeroError(f"internal: the model owner logged {len(profiles)} profiles for {len(plan) + 1} executions")
    return results[CLIENT]["result"], results[OWNER]["result"], profiles
