"""SPU parties as separate OS processes, talking over SPU's own brpc link (loopback here, or across hosts).

Rank 0 is the model owner (it shares its weights), rank 1 the client (it shares one_hot(tokens) and
receives the logits); aby3 adds rank 2, a helper with no input. Each party secret-shares its inputs
itself and sends the others their shares over the link (before the measured executions), runs the
warm-up and every program, and its profiler counts its own traffic. The client reconstructs the
logits from the shares the others send it.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading

import numpy as np

from aero_compile.errors import AeroError
from aero_compile.targets.private.processes import Party, launch_parties

from .config import CLIENT, OWNER, ROLE_NAMES, parties, runtime_config
from .profiling import parse_executions
from .session import PartySession, warm_up_program


def free_addresses(count: int) -> list[str]:
    """``count`` loopback host:port addresses free right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def connect(rank: int, addresses: list[str], timeout_s: float):
    """This party's brpc link to the others; it waits up to ``timeout_s`` for them to come up."""
    from spu import libspu

    description = libspu.link.Desc()
    description.id = "aero-compile"
    for index, address in enumerate(addresses):
        description.add_party(f"party{index}", address)
    description.connect_retry_interval_ms = 500
    description.connect_retry_times = max(1, int(timeout_s * 2))
    description.recv_timeout_ms = int(timeout_s * 1000)
    description.http_timeout_ms = int(timeout_s * 1000)
    outcome: dict = {}

    def attempt() -> None:  # brpc's own retries can outlast the timeout: the wait below bounds them
        try:
            link = libspu.link.create_brpc(description, rank)
            link.barrier()  # returns once every peer is up
            outcome["link"] = link
        except RuntimeError as exc:
            outcome["error"] = str(exc).strip().splitlines()
    waiter = threading.Thread(target=attempt, daemon=True)
    waiter.start()
    waiter.join(timeout_s)
    if "link" not in outcome:
        peers = " and ".join(f"the {ROLE_NAMES.get(r, f'rank {r}')} at {a}" for r, a in enumerate(addresses) if r != rank)
        detail = [line for line in outcome.get("error", []) if line and line != "what:"][:1]
        raise AeroError(f"could not reach {peers} within {timeout_s:.0f} s" + (f" ({detail[0][:120]})" if detail else ""))
    link = outcome["link"]
    return link


def _pack(share) -> bytes:
    return pickle.dumps((share.meta, list(share.share_chunks)))


def _unpack(data: bytes):
    from spu import libspu

    meta, chunks = pickle.loads(data)  # from our peer, in the format _pack wrote
    share = libspu.Share()
    share.meta, share.share_chunks = meta, chunks
    return share


def exchange_shares(link, io, mine: list[np.ndarray], owner_rank: int, count: int) -> list:
    """Shares of ``count`` inputs that ``owner_rank`` holds: it splits ``mine``; everyone gets its share."""
    from spu import libspu

    rank, world = link.rank, link.world_size
    if rank == owner_rank:
        shares = [io.make_shares(np.ascontiguousarray(a, np.float32), libspu.Visibility.VIS_SECRET) for a in mine]
        for peer in range(world):
            if peer != rank:
                link.send(peer, pickle.dumps([_pack(s[peer]) for s in shares]))
        return [s[rank] for s in shares]
    received = pickle.loads(link.recv(owner_rank))
    if len(received) != count:
        raise AeroError(f"expected {count} input shares from {ROLE_NAMES[owner_rank]}, got {len(received)}")
    return [_unpack(data) for data in received]


def party_main(rank: int, addresses: list[str], jobs: list[tuple[bytes, list | None]], protocol: str,
               timeout_s: float, fault: str | None = None) -> dict:
    """One party's whole run over ``jobs`` [(executable bytes, this party's inputs or None)], the warm-up
    first; the client's result carries the logits. Runs in a spawned process: nothing here needs torch."""
    if fault == "absent":
        return {"logits": None}  # test hook: this party never joins, as a machine that was never started
    link = connect(rank, addresses, timeout_s)
    if fault == "exit-after-connect":
        os._exit(3)  # test hook: this party dies mid-run, as a crashed machine would
    return {"logits": run_jobs(link, jobs, protocol)}


def run_jobs(link, jobs: list[tuple[bytes, list | None]], protocol: str) -> list | None:
    """Run the warm-up and each program over an open link; the client returns the logits, the others None."""
    from spu import api, libspu

    rank, config = link.rank, runtime_config(protocol)
    io = api.Io(link.world_size, config)
    session = PartySession(link, config)
    logits = []
    for index, (code, inputs) in enumerate(jobs):
        executable = libspu.Executable()
        executable.ParseFromString(code)
        count = len(executable.input_names)
        # the first input is the client's (one_hot(tokens)), the rest the owner's; the warm-up's are the owner's
        client_count = 0 if index == 0 else 1
        mine = inputs or []
        client_shares = exchange_shares(link, io, mine if rank == CLIENT else [], CLIENT, client_count) if client_count else []
        owner_shares = exchange_shares(link, io, mine if rank == OWNER else [], OWNER, count - client_count)
        output = session.run(executable, client_shares + owner_shares)
        if rank == CLIENT:
            peers = {peer: _unpack(link.recv(peer)) for peer in range(link.world_size) if peer != CLIENT}
            logits.append(io.reconstruct([output if r == CLIENT else peers[r] for r in range(link.world_size)]))
        else:
            link.send(CLIENT, _pack(output))
    link.stop_link()
    return logits[1:] if rank == CLIENT else None


def party_jobs(rank: int, programs: list, input_ids: "torch.Tensor") -> list[tuple[bytes, list | None]]:
    """What one party is given: each program's code, and only its own inputs (the client never sees a weight)."""
    warm_executable, warm_inputs = warm_up_program()
    jobs = [(warm_executable.SerializeToString(), warm_inputs if rank == OWNER else None)]
    for program in programs:
        inputs = program.client_inputs(input_ids) if rank == CLIENT else program.owner_inputs() if rank == OWNER else None
        jobs.append((program.executable.SerializeToString(), inputs))
    return jobs


def run_parties(programs: dict, input_ids: "torch.Tensor", *, protocol: str, timeout_s: float,
                fault: dict[int, str] | None = None, relay_ports: list[int] | None = None,
                addresses: list[str] | None = None) -> tuple[list[np.ndarray], list[dict]]:
    """Run every program between separate party processes on loopback; (client's logits, owner's profiles).

    ``relay_ports`` (with the ``addresses`` the relay forwards to, ``spu.runner``): each party listens at its
    own address and dials its peers at their relay ports, so that every byte crosses the emulated link.
    """
    world = parties(protocol)
    addresses = addresses or free_addresses(world)
    ordered = list(programs.values())

    def seen_by(rank: int) -> list[str]:
        if relay_ports is None:
            return addresses
        return [own if peer == rank else f"127.0.0.1:{relay_ports[peer]}" for peer, own in enumerate(addresses)]

    members = [Party(ROLE_NAMES.get(rank, f"rank {rank}"), party_main,
                     (rank, seen_by(rank), party_jobs(rank, ordered, input_ids), protocol, timeout_s,
                      (fault or {}).get(rank)), output_log=True)
               for rank in range(world)]
    # spawned: SPU's native thread pools (already started by a compile or a simulation here) do not survive a fork.
    # The parties bound their waiting themselves (brpc's connect retries and receive timeout: a dead or missing
    # peer fails them with a message) and mark none of it on the launcher's wait clock, so its waiting bound
    # never fires; its deadline only catches one stuck outside the link. A long model (cheetah at T=128 runs
    # minutes) must not hit it: an hour at least.
    results = launch_parties(members, timeout_s=timeout_s, deadline_s=max(3 * timeout_s + 30, 3600),
                             prefix="aero-spu-", start_method="spawn")
    profiles = parse_executions(results[OWNER]["log"])
    if len(profiles) != len(ordered) + 1:
        raise AeroError(f"internal: the model owner logged {len(profiles)} profiles for {len(ordered) + 1} executions")
    return results[CLIENT]["result"]["logits"], profiles
