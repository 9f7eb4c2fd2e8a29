"""Run this process as one SPU party whose peers run elsewhere (other machines), from the CLI.

    # machine A (model owner)                          # machine B (client)
    aero-compile gpt2-tiny --passes all --run-private   aero-compile gpt2-tiny --passes all --run-private \\
        --engine spu --spu-party 0 \\                       --engine spu --spu-party 1 \\
        --spu-addresses A:9530,B:9531                       --spu-addresses A:9530,B:9531 --report-json r.json \\
                                                            --private-logits-out logits.pt

Each party loads the same model and passes. The client shares its own ``--prompt`` / ``--prompt-ids``
(else ``--private-seq-len`` random ids) and first announces their count over the typed wire: every
party's T follows it, and the owner is never given the prompt (refused before any link opens). The
owner computes the public rsqrt scales on its weights at that T and sends them, so all compile the same
programs; the client's weights are never read (zeroed here). ``--generate N``: ``multihost_generation``. Each party measures its own traffic (in 2PC both count the same bytes); the client gets the
logits, and ``--private-logits-out`` saves them (with the tokens) for whoever holds the weights.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.fx as fx

from aero_compile.capturing import example_input
from aero_compile.errors import AeroError
from aero_compile.fileio import atomic_path
from aero_compile.targets.private.keys import RoleFiles, load_role
from aero_compile.targets.private.security import link_mode, security_block
from aero_compile.targets.private.wire import WireError, decode, encode

from .config import CLIENT, OWNER, ROLE_NAMES, parties
from .lowering import SpuProgram, owner_scales
from .party import TLS_ROLES, connect, run_jobs
from .profiling import captured_native_output, parse_executions
from .session import warm_up_program


def parse_addresses(text: str, protocol: str) -> list[str]:
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    if len(addresses) != parties(protocol) or not all(":" in a for a in addresses):
        raise AeroError(f"--spu-addresses needs {parties(protocol)} host:port addresses for {protocol}, "
                        f"one per rank (e.g. 10.0.0.1:9530,10.0.0.2:9531), got '{text}'")
    return addresses


def receive_scales(data: bytes, names: list[str]) -> dict[str, dict[str, float]]:
    """The owner's public norm scales, {graph name: {node name: scale}}; WireError if the message is not that."""
    peer = f"the {ROLE_NAMES[OWNER]} (rank {OWNER})"
    header, arrays = decode(data, peer=peer)
    scales = header.get("scales")
    if (header.get("kind") != "spu-scales" or arrays or not isinstance(scales, dict) or sorted(scales) != sorted(names)
            or not all(isinstance(table, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in table.values()) for table in scales.values())):
        raise WireError(f"{peer} sent something other than the norm scales of {', '.join(names)}: refused")
    return scales


def announce_prompt(link, prompt_tokens: int, new_tokens: int | None = None) -> None:
    """The client tells the owner its prompt's length (public: the programs' shapes follow it) and, when
    generating, how many tokens it asks for; never the tokens themselves."""
    link.send(OWNER, encode({"kind": "spu-prompt", "prompt_tokens": int(prompt_tokens),
                             "new_tokens": None if new_tokens is None else int(new_tokens)}))


def receive_prompt(data: bytes, context: int | None, new_tokens: int | None = None) -> int:
    """The prompt length the client announced; WireError if the message is not that, AeroError (naming the
    fix) if it does not fit the model or asks for another number of tokens than this owner was given."""
    peer = f"the {ROLE_NAMES[CLIENT]} (rank {CLIENT})"
    header, arrays = decode(data, peer=peer)
    length, asked = header.get("prompt_tokens"), header.get("new_tokens")
    if (header.get("kind") != "spu-prompt" or arrays or type(length) is not int or length < 1
            or not (asked is None or (type(asked) is int and asked >= 1))):
        raise WireError(f"{peer} sent something other than its prompt's length: refused")
    if asked != new_tokens:
        mine = "no --generate" if new_tokens is None else f"--generate {new_tokens}"
        theirs = "a forward pass" if asked is None else f"--generate {asked}"
        raise AeroError(f"the client asks for {theirs} and this model owner was given {mine}: give both parties "
                        "the same --generate")
    if context and length + (new_tokens or 1) - 1 > context:
        raise AeroError(f"the client's {length}-token prompt (and {new_tokens or 1} token(s) after it) does not fit "
                        f"the model's context of {context}: the client must give a shorter prompt")
    return length


def share_setup(link, rank: int, graphs: dict, compute_scales, seq_len: int) -> tuple[int, dict]:
    """(the run's T, {graph name: scales}): the owner learns T from the client, computes its public scales at T
    (``compute_scales(name, T)``) and sends both to every other party; the others receive them."""
    if rank == OWNER:
        scales = {name: compute_scales(name, seq_len) for name in graphs}
        for peer in range(1, link.world_size):
            link.send(peer, encode({"kind": "spu-scales", "scales": scales, "seq_len": seq_len}))
        return seq_len, scales
    data = link.recv(OWNER)
    scales = receive_scales(data, list(graphs))  # public numbers the owner chose (norm_scaling)
    seq_len = decode(data, peer=f"the {ROLE_NAMES[OWNER]} (rank {OWNER})")[0].get("seq_len")
    if type(seq_len) is not int or seq_len < 1:
        raise WireError(f"the {ROLE_NAMES[OWNER]} (rank {OWNER}) sent no prompt length with its scales: refused")
    return seq_len, scales


def _quiet_native_log() -> None:
    # brpc keeps retrying a peer it could not reach, in its own threads, until this process exits, and logs
    # each try to fd 2: point fd 2 at /dev/null and give Python's stderr its own copy of the terminal, so the
    # one line the CLI prints is all the user sees.
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):
        return  # Python's stderr is not fd 2 (captured, as in a test): leave both alone
    sys.stderr.flush()
    terminal = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(terminal, "w", buffering=1)


def link_files(rank: int, tls: str | None, insecure_link: bool) -> tuple[str, RoleFiles | None]:
    """(``security_block``'s hosts, this rank's certificate files or None); AeroError before any work if the
    link options are missing or the files are not there."""
    hosts = link_mode(multihost=True, tls=tls, insecure_link=insecure_link)
    return hosts, (load_role(tls, TLS_ROLES[rank]) if tls else None)


def check_prompt_holder(rank: int, prompt_ids: list[int] | None) -> None:
    """Only the client is given the prompt: refused on any other rank, before any link opens."""
    if prompt_ids and rank != CLIENT:
        raise AeroError(f"the prompt is the client's alone, and this process is the {ROLE_NAMES.get(rank, 'party')} "
                        f"(--spu-party {rank}): drop --prompt / --prompt-ids here and give it to the client "
                        f"(--spu-party {CLIENT}) only")


def blank_weights(graphs) -> None:
    """A party that is not the owner knows the architecture, never the weights: zero them before anything runs."""
    for gm in graphs:
        with torch.no_grad():
            for parameter in gm.parameters():
                parameter.zero_()


def open_party_link(rank: int, addresses: list[str], timeout_s: float, files: RoleFiles | None):
    """This party's link to the others (``party.connect``), a failure named in the CLI's one line."""
    try:
        with captured_native_output():  # brpc logs each refused handshake; ours is the one line the user sees
            return connect(rank, addresses, timeout_s, tls=files)
    except AeroError:
        _quiet_native_log()
        raise


def run_as_party(graphs: dict[str, fx.GraphModule], *, rank: int, addresses: list[str], seq_len: int,
                 protocol: str, timeout_s: float, batch: int = 1, seed: int = 0,
                 logits_out: str | None = None, tls: str | None = None, insecure_link: bool = False,
                 prompt_ids: list[int] | None = None) -> dict:
    """Join the run as ``rank``; this party's measured records. On the client, ``logits_out`` gets
    ``{name: logits, "input_ids": tokens}`` (torch.save), as CrypTen's ``--party`` client writes it.
    ``tls`` is a ``keys`` folder (mutual TLS, each peer's role checked); without it, ``insecure_link``
    must be given. ``prompt_ids``: the client's own tokens (the client only), else it shares ``seq_len``
    random ids; either way the client announces their count and every party's T follows it."""
    if not 0 <= rank < len(addresses):
        raise AeroError(f"--spu-party must be a rank between 0 and {len(addresses) - 1}, got {rank}")
    check_prompt_holder(rank, prompt_ids)
    hosts, files = link_files(rank, tls, insecure_link)
    if logits_out and rank != CLIENT:
        raise AeroError(f"--private-logits-out: only the client (--spu-party {CLIENT}) reconstructs the logits; "
                        f"drop it on rank {rank}")
    if rank != OWNER:
        blank_weights(graphs.values())
    first = next(iter(graphs.values()))
    if rank == CLIENT and prompt_ids:
        input_ids, seq_len = torch.tensor([list(prompt_ids)]), len(prompt_ids)
    else:
        input_ids = example_input(first, seq_len=seq_len, batch=batch, seed=seed)
    link = open_party_link(rank, addresses, timeout_s, files)
    if rank == CLIENT:
        announce_prompt(link, seq_len)
    elif rank == OWNER:
        from aero_compile.graph_info import graph_info

        seq_len = receive_prompt(link.recv(CLIENT), graph_info(first).max_seq_len)
        input_ids = None  # the owner shares no tokens

    def compute_scales(name: str, length: int) -> dict[str, float]:
        gm = graphs[name]
        return owner_scales(gm, SpuProgram(gm, batch=batch, seq_len=length, scales={}).vocab, batch, length)

    seq_len, scales = share_setup(link, rank, graphs, compute_scales, seq_len)
    programs = {name: SpuProgram(gm, batch=batch, seq_len=seq_len, scales=scales[name]) for name, gm in graphs.items()}
    warm_executable, warm_inputs = warm_up_program()
    jobs = [(warm_executable.SerializeToString(), warm_inputs if rank == OWNER else None)]
    for program in programs.values():
        inputs = program.client_inputs(input_ids) if rank == CLIENT else program.owner_inputs() if rank == OWNER else None
        jobs.append((program.executable.SerializeToString(), inputs))
    with captured_native_output() as captured:
        logits = run_jobs(link, jobs, protocol)
    profiles = parse_executions(captured["log"])
    if rank == CLIENT and logits_out:
        with atomic_path(logits_out) as tmp:
            torch.save({name: torch.as_tensor(logits[index]) for index, name in enumerate(graphs)}
                       | {"input_ids": input_ids}, tmp)
    measured = {}
    for index, name in enumerate(graphs):
        profile = profiles[index + 1]
        record = {"engine": "spu", "protocol": protocol, "rounds": profile["rounds"], "bytes": profile["bytes"],
                  "seconds": profile["seconds"], "by_op": profile["by_op"], "setup": profiles[0],
                  "mode": "multihost", "rank": rank, "role": ROLE_NAMES.get(rank, str(rank)),
                  "measured_by": f"{ROLE_NAMES.get(rank, str(rank))} (rank {rank}): bytes sent + received",
                  "seq_len": seq_len, "batch": batch, "max_abs_error": None, "argmax_agreement": None,
                  "security": security_block(engine="spu", provider=protocol, hosts=hosts)}
        if rank == CLIENT and rank != OWNER:
            # the client ran the plaintext graph with zeroed weights: it cannot check the logits itself
            record["logits_argmax"] = torch.as_tensor(logits[index]).argmax(-1).tolist()
        measured[name] = record
    return measured
