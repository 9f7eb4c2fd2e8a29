"""SPU parties as separate OS processes, talking over SPU's own brpc link (loopback here, or across hosts).

Rank 0 is the model owner (it shares its weights), rank 1 the client (it shares one_hot(tokens) and
receives the logits); aby3 adds rank 2, a helper with no input. Each party secret-shares its inputs
itself and sends the others their shares over the link (before the measured executions), runs the
warm-up and every program, and its profiler counts its own traffic. The client reconstructs the
logits from the shares the others send it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time

import numpy as np

from aero_compile.errors import AeroError
from aero_compile.targets.private.keys import RoleFiles
from aero_compile.targets.private.processes import Party, launch_parties
from aero_compile.targets.private.tls import check_peer
from aero_compile.targets.private.wire import WireError, decode, encode

from .config import CLIENT, OWNER, ROLE_NAMES, parties, runtime_config
from .profiling import parse_executions
from .session import PartySession, warm_up_program

# the certificate role (``private.keys``) each rank must present; aby3's third party uses the dealer's
TLS_ROLES = {OWNER: "owner", CLIENT: "client", 2: "dealer"}


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


def _secure(description, tls: RoleFiles, trust: str) -> None:
    """Mutual TLS on brpc's links: present ``tls``' certificate, accept peers that ``trust`` verifies."""
    description.enable_ssl = True
    for options in (description.server_ssl_opts, description.client_ssl_opts):  # pybind: set the fields in place
        options.cert.certificate_path = str(tls.certificate)
        options.cert.private_key_path = str(tls.key)
        options.verify.ca_file_path = trust
        options.verify.verify_depth = 2


@contextlib.contextmanager
def _peer_trust(tls: RoleFiles, peer_roles: list[str]):
    """The trust file brpc verifies peers with: only the anchors of the peers' roles (``keys``: trust/).

    brpc checks the chain, never a name: trusting only the peer's role anchor is what binds its role.
    Without trust/ files (a user's own PEM layout), ca.pem: any role's certificate then passes brpc, and
    only ``check_peer`` (the peer's server certificate, by name) binds the role. With two peers (aby3) the
    file holds both anchors, so brpc cannot tell those two roles apart (docs/security.md)."""
    if not all(role in tls.trust for role in peer_roles):
        yield str(tls.ca)
    elif len(peer_roles) == 1:
        yield str(tls.trust[peer_roles[0]])
    else:
        with tempfile.NamedTemporaryFile("wb", prefix="aero-trust-", suffix=".pem") as bundle:
            for role in peer_roles:
                bundle.write(tls.trust[role].read_bytes())
            bundle.flush()
            yield bundle.name  # brpc reads it while the link is set up, within this block


def connect(rank: int, addresses: list[str], timeout_s: float, tls: RoleFiles | None = None):
    """This party's brpc link to the others; it waits up to ``timeout_s`` for them to come up.

    With ``tls``, every link is mutual TLS, and each peer's certificate is checked (``private.tls``) before
    this returns: nothing is sent over the link before both ends are authenticated."""
    from spu import libspu

    description = libspu.link.Desc()
    description.id = "aero-compile"
    for index, address in enumerate(addresses):
        description.add_party(f"party{index}", address)
    description.connect_retry_interval_ms = 500
    description.connect_retry_times = max(1, int(timeout_s * 2))
    description.recv_timeout_ms = int(timeout_s * 1000)
    description.http_timeout_ms = int(timeout_s * 1000)
    peers = [r for r in range(len(addresses)) if r != rank]
    with contextlib.ExitStack() as stack:
        if tls is not None:
            _secure(description, tls, stack.enter_context(_peer_trust(tls, [TLS_ROLES[r] for r in peers])))
        return _open_link(description, rank, addresses, peers, timeout_s, tls)


def _open_link(description, rank: int, addresses: list[str], peers: list[int], timeout_s: float,
               tls: RoleFiles | None):
    from spu import libspu

    outcome: dict = {}

    def attempt() -> None:  # brpc's own retries can outlast the timeout: the wait below bounds them
        try:
            link = libspu.link.create_brpc(description, rank)
            link.barrier()  # returns once every peer is up
            outcome["link"] = link
        except RuntimeError as exc:
            outcome["error"] = str(exc).strip().splitlines()
    started = time.monotonic()
    waiter = threading.Thread(target=attempt, daemon=True)
    waiter.start()  # our brpc server must be up while we check the peers' (theirs wait for ours)
    if tls is not None:
        for peer in peers:
            check_peer(addresses[peer], TLS_ROLES[peer], tls, peer=_peer(peer), timeout_s=timeout_s)
    waiter.join(max(0.0, timeout_s - (time.monotonic() - started)))
    if "link" not in outcome:
        names = " and ".join(f"the {ROLE_NAMES.get(r, f'rank {r}')} at {addresses[r]}" for r in peers)
        detail = [line for line in outcome.get("error", []) if line and line != "what:"][:1]
        raise AeroError(f"could not reach {names} within {timeout_s:.0f} s" + (f" ({detail[0][:120]})" if detail else ""))
    return outcome["link"]


def _share_arrays(share) -> list[np.ndarray]:
    # a libspu Share is a serialized meta record and chunks of bytes: each travels as a uint8 array
    return [np.frombuffer(share.meta, np.uint8), *(np.frombuffer(chunk, np.uint8) for chunk in share.share_chunks)]


def _share_from(arrays: list[np.ndarray]):
    from spu import libspu

    share = libspu.Share()
    share.meta, share.share_chunks = arrays[0].tobytes(), [chunk.tobytes() for chunk in arrays[1:]]
    return share


def pack_shares(shares: list) -> bytes:
    """One wire message holding ``shares`` (libspu Share objects), never a pickle."""
    arrays, chunks = [], []
    for share in shares:
        parts = _share_arrays(share)
        arrays += parts
        chunks.append(len(parts) - 1)
    return encode({"kind": "spu-shares", "chunks": chunks}, arrays)


def unpack_shares(data: bytes, peer: str, count: int | None = None) -> list:
    """The shares in a message from ``peer`` (see ``pack_shares``); WireError naming the peer if it is not one."""
    header, arrays = decode(data, peer=peer)
    chunks = header.get("chunks")
    if (header.get("kind") != "spu-shares" or not isinstance(chunks, list)
            or not all(type(c) is int and c >= 0 for c in chunks) or sum(chunks) + len(chunks) != len(arrays)
            or any(a.dtype != np.uint8 or a.ndim != 1 for a in arrays)):
        raise WireError(f"{peer} sent a message that is not a list of SPU shares: refused")
    if count is not None and len(chunks) != count:
        raise WireError(f"{peer} sent {len(chunks)} input shares, expected {count}: refused")
    shares, start = [], 0
    for chunk_count in chunks:
        shares.append(_share_from(arrays[start:start + 1 + chunk_count]))
        start += 1 + chunk_count
    return shares


def _peer(rank: int) -> str:
    return f"the {ROLE_NAMES.get(rank, 'party')} (rank {rank})"


def exchange_shares(link, io, mine: list[np.ndarray], owner_rank: int, count: int) -> list:
    """Shares of ``count`` inputs that ``owner_rank`` holds: it splits ``mine``; everyone gets its share."""
    from spu import libspu

    rank, world = link.rank, link.world_size
    if rank == owner_rank:
        shares = [io.make_shares(np.ascontiguousarray(a, np.float32), libspu.Visibility.VIS_SECRET) for a in mine]
        for peer in range(world):
            if peer != rank:
                link.send(peer, pack_shares([s[peer] for s in shares]))
        return [s[rank] for s in shares]
    return unpack_shares(link.recv(owner_rank), _peer(owner_rank), count)


def party_main(rank: int, addresses: list[str], jobs: list[tuple[bytes, list | None]], protocol: str,
               timeout_s: float, fault: str | None = None, repetitions: int = 1) -> dict:
    """One party's whole run over ``jobs`` [(executable bytes, this party's inputs or None)], the warm-up
    first; the client's result carries the logits. Runs in a spawned process: nothing here needs torch."""
    if fault == "absent":
        return {"logits": None}  # test hook: this party never joins, as a machine that was never started
    link = connect(rank, addresses, timeout_s)
    if fault == "exit-after-connect":
        os._exit(3)  # test hook: this party dies mid-run, as a crashed machine would
    return {"logits": run_jobs(link, jobs, protocol, repetitions)}


# How long a party keeps its link's server up after stopping the link: a peer's last call (its stop, or a reply
# still on the way) must find this process still there. Under TLS, SPU 0.9.5's brpc fails a CHECK
# (controller.cpp:457, "error_code is 0") when a call meets a connection the other end has closed, and ends
# that process with exit code 255 and no message: seen twice in full test-suite runs, at the end of a run
# between two processes (tests/test_generation_spu_multihost.py, tests/test_security_spu_tls.py).
LINGER_S = 0.5


def close_link(link) -> None:
    """End a party's link together with its peers: meet them (a barrier), stop, and stay up ``LINGER_S`` while
    their stops arrive, so that no peer's last call finds this process gone."""
    link.barrier()
    link.stop_link()
    time.sleep(LINGER_S)


def run_jobs(link, jobs: list[tuple[bytes, list | None]], protocol: str, repetitions: int = 1) -> list | None:
    """Run the warm-up and each program (``repetitions`` times on the same shares) over an open link; the
    client returns the logits, the others None."""
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
        output = session.run(executable, client_shares + owner_shares, repetitions if index else 1)
        if rank == CLIENT:
            peers = {peer: unpack_shares(link.recv(peer), _peer(peer), 1)[0]
                     for peer in range(link.world_size) if peer != CLIENT}
            logits.append(io.reconstruct([output if r == CLIENT else peers[r] for r in range(link.world_size)]))
        else:
            link.send(CLIENT, pack_shares([output]))
    close_link(link)
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
                fault: dict[int, str] | None = None, repetitions: int = 1, relay_ports: list[int] | None = None,
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
                      (fault or {}).get(rank), repetitions), output_log=True)
               for rank in range(world)]
    # spawned: SPU's native thread pools (already started by a compile or a simulation here) do not survive a fork.
    # The parties bound their waiting themselves (brpc's connect retries and receive timeout: a dead or missing
    # peer fails them with a message) and mark none of it on the launcher's wait clock, so its waiting bound
    # never fires; its deadline only catches one stuck outside the link. A long model (cheetah at T=128 runs
    # minutes) must not hit it: an hour at least.
    results = launch_parties(members, timeout_s=timeout_s, deadline_s=max(3 * timeout_s + 30, 3600),
                             prefix="aero-spu-", start_method="spawn")
    profiles = parse_executions(results[OWNER]["log"])
    if len(profiles) != len(ordered) * repetitions + 1:
        raise AeroError(f"internal: the model owner logged {len(profiles)} profiles for "
                        f"{len(ordered) * repetitions + 1} executions")
    return results[CLIENT]["result"]["logits"], profiles
