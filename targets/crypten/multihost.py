"""Run this process as one party of a private run whose peers are started elsewhere (other machines).

Start one process per party, each with the same model, passes and sequence length::

    # machine A (model owner)                      # machine B (client)
    RANK=0 WORLD_SIZE=2 RENDEZVOUS=tcp://A:29500 \\  RANK=1 WORLD_SIZE=2 RENDEZVOUS=tcp://A:29500 \\
    DISTRIBUTED_BACKEND=gloo aero-compile gpt2-tiny  DISTRIBUTED_BACKEND=gloo aero-compile gpt2-tiny \\
        --run-private --party                           --run-private --party --private-logits-out l.pt

The provider is ``ttp`` unless ``--crypten-provider tfp`` is given: a third process with RANK=2
(WORLD_SIZE stays 2) is the dealer. (``tfp`` lets the model owner's process make every triple, so it
could open the client's shares: a single-machine measurement may use it, a run between hosts should not.)
The parties talk over our own links (``communicator``, ``private.link.mesh``), not gloo: the model owner
listens at RENDEZVOUS (tcp://HOST:PORT, on that address only), the others dial it; with ttp the client
also listens (on the interface it reaches the owner by) for the dealer, and tells the others where
through the owner. ``tls``: mutual TLS with the per-role certificates in that folder
(``private.link.tls``); without it ``insecure_link`` must be given (plaintext, unauthenticated).
DISTRIBUTED_BACKEND is still required (the environment contract of these runs) but not used.
"""

from __future__ import annotations

import os
import socket
import time

import torch
import torch.fx as fx

from aero_compile.capturing import example_input
from aero_compile.errors import AeroError, describe
from aero_compile.fileio import atomic_path
from aero_compile.targets.private.party_watch import SelfWatch, describe_party
from aero_compile.targets.private.security import link_mode, security_block

from aero_compile.targets.private.link.mesh import PeerLost
from aero_compile.targets.private.link.tls import TlsRoles

from .party import CLIENT, OWNER, PARTIES, PROVIDERS, ROLE_KEYS, ROLE_NAMES, backstop_timeout, link_plan, run_party
from .store_board import mesh_board_connector, store_host
from .weight_masks import DEFAULT_WEIGHT_MASKS

MULTIHOST_PROVIDER = "ttp"  # between hosts, the secure provider unless --crypten-provider tfp is given
REQUIRED_ENVIRONMENT = ("RANK", "WORLD_SIZE", "RENDEZVOUS", "DISTRIBUTED_BACKEND")


def party_rank(provider: str) -> int:
    """This process's rank from the environment; AeroError naming what is missing or wrong."""
    missing = [name for name in REQUIRED_ENVIRONMENT if not os.environ.get(name)]
    if missing:
        raise AeroError(f"--party needs the environment variables {', '.join(missing)} "
                        "(e.g. RANK=0 WORLD_SIZE=2 RENDEZVOUS=tcp://HOST:29500 DISTRIBUTED_BACKEND=gloo)")
    if os.environ["WORLD_SIZE"] != str(PARTIES):
        raise AeroError(f"WORLD_SIZE must be {PARTIES} (model owner and client), got {os.environ['WORLD_SIZE']}")
    try:
        rank = int(os.environ["RANK"])
    except ValueError:
        raise AeroError(f"RANK must be an integer, got '{os.environ['RANK']}'") from None
    highest = PARTIES if provider == "ttp" else PARTIES - 1
    if not 0 <= rank <= highest:
        raise AeroError(f"RANK must be between 0 and {highest} with the {provider} provider, got {rank}")
    return rank


def owner_address(rendezvous: str) -> tuple[str, int]:
    """(host, port) of RENDEZVOUS, where the model owner listens; AeroError if it is not tcp://HOST:PORT."""
    host = store_host(rendezvous)
    if host is None:
        raise AeroError(f"RENDEZVOUS must be tcp://HOST:PORT (the model owner's address), got '{rendezvous}'")
    return host


def _interface_towards(address: tuple[str, int]) -> str:
    """This host's address on the route to ``address`` (where a peer there can reach us)."""
    probe = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(address)  # UDP: picks the route, sends nothing
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def party_link(rank: int, provider: str, rendezvous: str, timeout_s: float, tls: str | None):
    """This party's links: the owner listens at RENDEZVOUS; with ttp the client listens for the dealer."""
    owner = owner_address(rendezvous)
    listen = None
    if rank == OWNER:
        listen = owner
    elif rank == CLIENT and provider == "ttp":  # the dealer dials the client
        listen = (_interface_towards(owner), 0)
    # the links' own deadline is a backstop: SelfWatch bounds the waiting and says who is missing
    return link_plan(rank, provider, {OWNER: owner}, listen=listen, timeout_s=backstop_timeout(timeout_s), tls=tls)


def check_prompt_holder(rank: int, given: str | None) -> None:
    """Only the client is given the prompt (or sampling settings): refused on any other rank, before any link."""
    if given and rank != CLIENT:
        raise AeroError(f"{given} is the client's alone, and this process is the {ROLE_NAMES[rank]} (RANK={rank}): "
                        f"drop {given} here and give it to the client (RANK={CLIENT}) only")


def join_as_party(provider: str | None, timeout_s: float, tls: str | None, insecure_link: bool, work):
    """(rank, provider, hosts, result): ``work(link)`` run as RANK over this party's links, its faults named."""
    provider = provider or MULTIHOST_PROVIDER
    if provider not in PROVIDERS:
        raise AeroError(f"unknown CrypTen provider '{provider}': use one of {', '.join(PROVIDERS)}")
    hosts = link_mode(multihost=True, tls=tls, insecure_link=insecure_link)  # one of them, knowingly
    rank = party_rank(provider)
    if tls is not None:
        TlsRoles.load(tls, ROLE_KEYS[rank])  # a missing or unreadable file: one line, before anything starts
    roles = {r: ROLE_NAMES[r] for r in range(PARTIES + 1 if provider == "ttp" else PARTIES)}
    rendezvous = os.environ["RENDEZVOUS"]
    # The watch ends this process with one line once it has waited --party-timeout with no peer working
    # (a lone party: no peer ever connected); a peer that dies makes the next call fail, named below.
    link = party_link(rank, provider, rendezvous, timeout_s, tls)
    with SelfWatch(rank, roles, timeout_s, rendezvous, mesh_board_connector(rank)) as watch:
        try:
            return rank, provider, hosts, work(link)
        except PeerLost as exc:
            elapsed = time.time() - watch.start
            raise AeroError(f"{describe_party(rank, roles)} lost its peers {elapsed:.1f} s after it started: "
                            f"{exc}") from None
        except RuntimeError as exc:  # a peer went away mid-run
            elapsed = time.time() - watch.start
            raise AeroError(f"{describe_party(rank, roles)} lost its peers {elapsed:.1f} s after it started: "
                            f"{watch.blame_after_failure()} ({describe(exc, 120)})") from None


def run_as_party(graphs: dict[str, fx.GraphModule], *, seq_len: int, batch: int = 1, seed: int = 0,
                 provider: str | None = None, timeout_s: float = 120.0, logits_out: str | None = None,
                 weight_masks: str = DEFAULT_WEIGHT_MASKS, tls: str | None = None,
                 insecure_link: bool = False, prompt_ids: list[int] | None = None) -> dict:
    """Join the run as RANK; return this party's figures (the client's carry no logits, see logits_out).

    ``provider`` None is the secure default between hosts, ``ttp``; the link is protected by ``tls``
    (mutual TLS) or knowingly left plaintext by ``insecure_link`` (``private.security``). ``prompt_ids``:
    the client's own tokens (the client only); the client then announces their count, the owner's T
    follows it. Without, the client shares ``seq_len`` random ids (a measurement)."""
    rank_now = party_rank(provider or MULTIHOST_PROVIDER)
    check_prompt_holder(rank_now, "--prompt" if prompt_ids else None)
    first = next(iter(graphs.values()))
    if rank_now == CLIENT and prompt_ids:
        input_ids, seq_len = torch.tensor([list(prompt_ids)]), len(prompt_ids)
    else:
        input_ids = example_input(first, seq_len=seq_len, batch=batch, seed=seed) if rank_now == CLIENT else None

    def work(link):
        return run_party(graphs, input_ids, batch=batch, seq_len=seq_len, provider=provider or MULTIHOST_PROVIDER,
                         timeout_s=timeout_s, weight_masks=weight_masks, link=link, client_sets_seq_len=True,
                         from_prompt=bool(prompt_ids))

    rank, provider, hosts, results = join_as_party(provider, timeout_s, tls, insecure_link, work)
    if rank == PARTIES:
        return {}  # the dealer has no figures of its own
    if rank == CLIENT and logits_out:
        with atomic_path(logits_out) as tmp:
            torch.save({name: r["logits"] for name, r in results.items()} | {"input_ids": input_ids}, tmp)
    seq_len = next(iter(results.values()))["seq_len"]  # the owner's follows the client's
    measured = {}
    for name, result in results.items():
        forward = result["forward"]
        measured[name] = {"rounds": forward["rounds"], "bytes": forward["bytes"], "seconds": forward["seconds"],
                          "max_abs_error": None, "argmax_agreement": None, "by_op": forward["by_op"],
                          "setup": result["setup"], "reveal": result["reveal"], "provider": provider,
                          "offline": {"rounds": result["offline"]["rounds"], "bytes": result["offline"]["bytes"]},
                          "weight_masks": weight_masks,
                          "seq_len": seq_len, "batch": batch, "rank": rank, "tls": tls is not None,
                          "link": {"bandwidth_mbps": None, "rtt_ms": None, "emulated": False},
                          "role": ROLE_NAMES.get(rank, str(rank)), "measured_by": f"{ROLE_NAMES[rank]} (rank {rank})",
                          "security": security_block(engine="crypten", provider=provider, hosts=hosts)}
    return measured
