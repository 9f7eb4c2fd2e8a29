"""Run this process as one SPU party whose peers run elsewhere (other machines), from the CLI.

    # machine A (model owner)                          # machine B (client)
    aero-compile gpt2-tiny --passes all --run-private   aero-compile gpt2-tiny --passes all --run-private \\
        --engine spu --spu-party 0 \\                       --engine spu --spu-party 1 \\
        --spu-addresses A:9530,B:9531                       --spu-addresses A:9530,B:9531 --report-json r.json \\
                                                            --private-logits-out logits.pt

Each party loads the same model and passes. The owner computes the public rsqrt scales on its weights
and sends them first, so both compile the same programs; the client's weights are never read (zeroed
here). Each party measures its own traffic (in 2PC both count the same bytes); the client gets the
logits, and ``--private-logits-out`` saves them (with the tokens) for whoever holds the weights.
"""

from __future__ import annotations

import json

import torch
import torch.fx as fx

from aero_compile.capturing import example_input
from aero_compile.errors import AeroError
from aero_compile.fileio import atomic_path

from .config import CLIENT, OWNER, ROLE_NAMES, parties
from .lowering import SpuProgram, owner_scales
from .party import connect, run_jobs
from .profiling import captured_native_output, parse_executions
from .session import warm_up_program


def parse_addresses(text: str, protocol: str) -> list[str]:
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    if len(addresses) != parties(protocol) or not all(":" in a for a in addresses):
        raise AeroError(f"--spu-addresses needs {parties(protocol)} host:port addresses for {protocol}, "
                        f"one per rank (e.g. 10.0.0.1:9530,10.0.0.2:9531), got '{text}'")
    return addresses


def run_as_party(graphs: dict[str, fx.GraphModule], *, rank: int, addresses: list[str], seq_len: int,
                 protocol: str, timeout_s: float, batch: int = 1, seed: int = 0,
                 logits_out: str | None = None) -> dict:
    """Join the run as ``rank``; this party's measured records. On the client, ``logits_out`` gets
    ``{name: logits, "input_ids": tokens}`` (torch.save), as CrypTen's ``--party`` client writes it."""
    if not 0 <= rank < len(addresses):
        raise AeroError(f"--spu-party must be a rank between 0 and {len(addresses) - 1}, got {rank}")
    if logits_out and rank != CLIENT:
        raise AeroError(f"--private-logits-out: only the client (--spu-party {CLIENT}) reconstructs the logits; "
                        f"drop it on rank {rank}")
    if rank != OWNER:
        for gm in graphs.values():
            with torch.no_grad():
                for parameter in gm.parameters():
                    parameter.zero_()  # the client knows the architecture, never the weights
    input_ids = example_input(next(iter(graphs.values())), seq_len=seq_len, batch=batch, seed=seed)
    link = connect(rank, addresses, timeout_s)
    if rank == OWNER:
        scales = {}
        for name, gm in graphs.items():
            vocab = SpuProgram(gm, batch=batch, seq_len=seq_len, scales={}).vocab
            scales[name] = owner_scales(gm, vocab, batch, seq_len)
        for peer in range(1, link.world_size):
            link.send(peer, json.dumps(scales))
    else:
        scales = json.loads(link.recv(OWNER))  # public numbers the owner chose (norm_scaling)
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
                  "seq_len": seq_len, "batch": batch, "max_abs_error": None, "argmax_agreement": None}
        if rank == CLIENT and rank != OWNER:
            # the client ran the plaintext graph with zeroed weights: it cannot check the logits itself
            record["logits_argmax"] = torch.as_tensor(logits[index]).argmax(-1).tolist()
        measured[name] = record
    return measured
