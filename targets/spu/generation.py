"""Private generation under SPU on this machine: prefill, then decode steps, in one session.

    from aero_compile.targets.spu.generation import generate_privately
    result = generate_privately(gm, prompt_ids, new_tokens=4, protocol="cheetah")
    result["tokens"], result["decode"]          # [{context, rounds, bytes, seconds}, ...], prefill first

SPU compiles static shapes, so each step is its own program: the prefill at the prompt's length, then
one decode-step program per context (the cache grows by one row a step; a program compiles in seconds
and is cached on disk, ``lowering.compile_cached``). These are exactly the programs the analyzer
prices per context (``generation.pricing``), so measured and predicted bytes compare step by step.

Both parties run in one SPU session (``generation_party``): the owner's values are secret-shared once
(a value that depends on a step's public values, a position-table row, is shared for that step only);
each step's ``present`` K/V outputs stay in the parties' runtimes as secret values and become the next
step's ``past`` inputs: never revealed, never sent. After each step only the client receives the
other party's share of the new position's logits, picks the greedy token in plaintext and
secret-shares its one-hot as the next input.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from aero_compile.errors import AeroError
from aero_compile.generation.programs import depends_on_step_values
from aero_compile.secrecy import Secrecy
from aero_compile.targets.private.dispatch import LoweringContext
from aero_compile.targets.private.graph import SecretGraph, owner_shares
from aero_compile.targets.private.norm_scaling import inv_sqrt_scales, owner_calibration_ids
from aero_compile.targets.private.security import PROVIDERS as SECURITY_NOTES

from .config import check_protocol
from .dispatch import lower_node
from .lowering import _public, compile_cached, constants_digest

DEFAULT_TIMEOUT_S = 300.0

class StepProgram:
    """One program of the generation (prefill, or a decode step at one context) as an SPU program of
    (one-hot tokens, past K/V..., owner values...) -> (logits, present K/V...)."""

    def __init__(self, gm: fx.GraphModule, *, rows: int, shapes: dict, scales: dict[str, float], vocab: int):
        self.gm, self.rows, self.vocab, self.scales = gm, rows, vocab, scales
        self.split = SecretGraph(gm)
        self.token_nodes = self.split.token_nodes
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.past_nodes = placeholders[1:]
        output = next(n for n in gm.graph.nodes if n.op == "output")
        self.output_nodes = [self.split.output, *output.args[0][1:]]
        plain = self.split.plain_values(1, rows, shapes)
        owned, inverses = owner_shares(gm, self.split.secrecy, plain)
        secrecy = self.split.secrecy
        # runtime variable names: once per session by node name, or for this step only
        self.owned = {}  # node -> (variable name, value)
        for node, value in owned.items():
            scope = "step" if depends_on_step_values(node, secrecy) else "owner"
            self.owned[node] = (f"{scope}.{node.name}", value.float().numpy())
        self.inverses = {}
        for node, value in inverses.items():
            scope = "step" if any(depends_on_step_values(a, secrecy) for a in node.all_input_nodes[1:]) else "owner"
            self.inverses[node] = (f"{scope}.inverse.{node.name}", value.float().numpy())
        self.public = {node: _public(value) for node, value in plain.items()
                       if secrecy.get(node) is Secrecy.PUBLIC and node is not self.split.input}
        self.past_shapes = [tuple(shapes[n].shape) for n in self.past_nodes]
        self.owner_values = [value for _, value in [*self.owned.values(), *self.inverses.values()]]
        self.owner_names = [name for name, _ in [*self.owned.values(), *self.inverses.values()]]
        self.input_names = ["tokens", *(f"past_{i}" for i in range(len(self.past_nodes))), *self.owner_names]
        self.output_names = ("logits", *(f"present_{i}" for i in range(len(self.output_nodes) - 1)))
        self._executable = None

    def function(self, tokens, *rest):
        """The step as jax: (logits, present K/V...)."""
        pasts, owned = rest[:len(self.past_nodes)], rest[len(self.past_nodes):]
        context = _StepContext(self, tokens, pasts, owned)
        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr") or not self.split.is_secret(node):
                continue
            context.secret[node] = lower_node(context, node)
        return tuple(context.secret[node] for node in self.output_nodes)

    @property
    def executable(self):
        if self._executable is None:
            shapes = [(1, self.rows, self.vocab), *self.past_shapes, *(tuple(v.shape) for v in self.owner_values)]
            self._executable = compile_cached(self.function, shapes, self.input_names,
                                              salt=constants_digest(self.gm, self.public, self.scales),
                                              output_names=self.output_names)
        return self._executable


class _StepContext(LoweringContext):
    def __init__(self, program: StepProgram, tokens, pasts, owned):
        self.gm, self.token_nodes, self.program, self.scales = program.gm, program.token_nodes, program, program.scales
        count = len(program.owned)
        self.secret = {program.split.input: tokens, **dict(zip(program.past_nodes, pasts)),
                       **dict(zip(program.owned, owned[:count]))}
        self.inverses = dict(zip(program.inverses, owned[count:]))

    def value(self, node: fx.Node):
        if node in self.secret:
            return self.secret[node]
        if node in self.program.public:
            return self.program.public[node]
        raise AeroError(f"internal: value of '{node.name}' is not available in the generation step")


def build_steps(programs, prompt_tokens: int, new_tokens: int, vocab: int,
                scales: dict[str, float] | None = None) -> list[StepProgram]:
    """The prefill at ``prompt_tokens`` and one decode program per context, with the owner's scales
    (``scales``: as the owner sent them, on a party that holds no weights)."""
    from aero_compile.generation.pricing import SymbolicShapes, _decode_inputs

    # the owner calibrates its norms' public scales on tokens of its own choosing, never the client's
    if scales is None:
        scales = inv_sqrt_scales(programs.prefill, owner_calibration_ids(vocab, 1, prompt_tokens))
    prefill_shapes = SymbolicShapes(programs.prefill, [((1, None), torch.long)])
    steps = [StepProgram(programs.prefill, rows=prompt_tokens, shapes=prefill_shapes.at(prompt_tokens),
                         scales=scales, vocab=vocab)]
    if new_tokens > 1:
        decode_shapes = SymbolicShapes(programs.decode, _decode_inputs(programs, 1))
        for context in range(prompt_tokens + 1, prompt_tokens + new_tokens):
            steps.append(StepProgram(programs.decode, rows=1, shapes=decode_shapes.at(context - 1),
                                     scales=scales, vocab=vocab))
    return steps


def session_plan(steps: list[StepProgram]) -> tuple[list[dict], dict[str, np.ndarray]]:
    """(per step: its code and which owner variables it shares, the owner's arrays by variable name).

    A session variable is shared by the first step that reads it and kept; a step variable is shared for
    its step and dropped. A session name seen again with other contents (a size the decode step holds as a
    number where the prefill computed it) is shared for that step instead: never a stale value.
    """
    plan, arrays, session = [], {}, {}
    for index, step in enumerate(steps):
        new_session, per_step, names = [], [], []
        for name, value in zip(step.owner_names, step.owner_values):
            if name.startswith("owner.") and name not in session:
                session[name] = value
                new_session.append(name)
                arrays[name] = value
            elif name.startswith("owner.") and session[name].shape == value.shape and np.array_equal(session[name], value):
                pass
            else:
                name = f"step{index}.{name}"
                per_step.append(name)
                arrays[name] = value
            names.append(name)
        step.input_names = ["tokens", *(f"past_{i}" for i in range(len(step.past_nodes))), *names]
        plan.append({"input_names": names, "session": new_session, "step": per_step, "pasts": len(step.past_nodes),
                     "presents": len(step.output_names) - 1})
    return plan, arrays


def generate_privately(gm: fx.GraphModule, prompt_ids: torch.Tensor, new_tokens: int, *, protocol: str = "cheetah",
                       timeout_s: float = DEFAULT_TIMEOUT_S, programs=None, sampling=None) -> dict:
    """Generation of ``new_tokens`` after ``prompt_ids`` [1, P] between SPU parties (processes): greedy unless
    ``sampling`` (``aero_compile.generation.sampling.Sampling``) says otherwise."""
    from aero_compile.generation import derive_programs
    from aero_compile.graph_info import graph_info

    from .generation_party import run_generation_parties

    check_protocol(protocol)
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1:
        raise AeroError("private generation takes one prompt: token ids of shape [1, P]")
    info = graph_info(gm)
    vocab, prompt_tokens = info.vocab_size, int(prompt_ids.shape[1])
    if int(prompt_ids.max()) >= vocab or int(prompt_ids.min()) < 0:
        raise AeroError(f"prompt token ids must lie in [0, {vocab})")
    if info.max_seq_len and prompt_tokens + new_tokens - 1 > info.max_seq_len:
        raise AeroError(f"--generate {new_tokens} after a {prompt_tokens}-token prompt runs past the model's context "
                        f"of {info.max_seq_len}: generate at most {info.max_seq_len - prompt_tokens + 1} tokens")
    programs = programs or derive_programs(gm)
    start = time.perf_counter()
    steps = build_steps(programs, prompt_tokens, new_tokens, vocab)
    plan, arrays = session_plan(steps)  # names the owner's variables: before compiling, which reads them
    for entry, step in zip(plan, steps):
        entry["code"] = step.executable.SerializeToString()
    compile_seconds = time.perf_counter() - start
    prompt_one_hot = F.one_hot(prompt_ids, vocab).float().numpy()
    client, owner, profiles = run_generation_parties(plan, arrays, prompt_one_hot, protocol=protocol,
                                                     timeout_s=timeout_s, sampling=sampling)
    decode = [{"context": prompt_tokens + index, "rounds": p["rounds"], "bytes": p["bytes"], "seconds": p["seconds"],
               "by_op": p["by_op"]} for index, p in enumerate(profiles[1:])]
    return {"tokens": client["tokens"], "logits": torch.as_tensor(np.stack(client["logits"])), "decode": decode,
            "setup": {k: profiles[0][k] for k in ("rounds", "bytes", "seconds")}, "owner_view": owner["view"],
            "owner_shared": [{"session": sum(arrays[n].size for n in entry["session"]),
                              "step": sum(arrays[n].size for n in entry["step"])} for entry in plan],
            "compile_seconds": compile_seconds, "seconds": time.perf_counter() - start, "provider": protocol,
            "engine": "spu", "note": SECURITY_NOTES.get(("spu", protocol), (None, ""))[1]}
