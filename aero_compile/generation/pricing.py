"""Cost per generated token: the analyzer prices prefill, each decode step at its context, and re-running.

    cost = price_generation(gm, programs, prompt_tokens=128, new_tokens=16, profile="crypten")
    cost.prefill.bytes, [step.bytes for step in cost.decode], cost.rerun.bytes

N new tokens: the prefill of the prompt gives the first; decode steps at contexts P+1 .. P+N-1 give the
rest (a step's context counts the token it reads). Re-running prices a full forward pass at P .. P+N-1.
Shapes are propagated once with a symbolic length and evaluated per context, so pricing 128 steps
costs 128 cost walks, not 128 fake-tensor traces.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..errors import AeroError, describe
from ..shapes import TensorMeta
from .programs import GenerationPrograms

SYMBOLIC_HINT = 131  # the example length behind the symbol: a size no static dim of a decoder is likely to have


@dataclass
class StepCost:
    context: int
    rounds: int
    bytes: int
    latency_s: float


@dataclass
class Totals:
    rounds: int = 0
    bytes: int = 0
    latency_s: float = 0.0

    def add(self, step: StepCost) -> None:
        self.rounds += step.rounds
        self.bytes += step.bytes
        self.latency_s += step.latency_s


@dataclass
class GenerationCost:
    """The ``generation`` section of one side of the report."""

    prompt_tokens: int
    new_tokens: int
    prefill: Totals
    decode: list[StepCost]
    total: Totals  # prefill + every decode step
    rerun: Totals  # a full forward pass per new token, at the length it reads
    # (``rerun_steps``, each of those passes, is set as a plain attribute: not part of the JSON)


class SymbolicShapes:
    """Every node's shape as a function of one length: traced once, evaluated at any length."""

    def __init__(self, program: fx.GraphModule, inputs: list[tuple[tuple, torch.dtype]]):
        """``inputs``: per placeholder, its shape (an int, or None for the symbolic length) and dtype."""
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

        from ..shapes import _MetaRecorder  # the analyzer's own recorder: the same TensorMeta per node

        mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
        fakes = []
        for shape, dtype in inputs:
            example = torch.zeros([SYMBOLIC_HINT if size is None else size for size in shape], dtype=dtype)
            dynamic = [DimDynamic.DYNAMIC if size is None else DimDynamic.STATIC for size in shape]
            fakes.append(mode.from_tensor(example, symbolic_context=StatelessSymbolicContext(dynamic_sizes=dynamic)))
        recorder = _MetaRecorder(program)
        try:
            with mode, torch.no_grad():
                recorder.run(*fakes)
        except Exception as exc:
            raise AeroError(f"cannot price the generation program: {describe(exc, 200)}") from None
        self.metas = recorder.metas
        self._values: dict[tuple, int] = {}

    def at(self, length: int) -> dict[fx.Node, TensorMeta]:
        return {node: TensorMeta(tuple(self._size(size, length) for size in meta.shape), meta.dtype)
                for node, meta in self.metas.items()}

    def _size(self, size, length: int) -> int:
        if isinstance(size, int):
            return size
        expr = size.node.expr
        key = (expr, length)
        if key not in self._values:
            self._values[key] = int(expr.xreplace({symbol: length for symbol in expr.free_symbols}))
        return self._values[key]


def price_generation(gm: fx.GraphModule, programs: GenerationPrograms, prompt_tokens: int, new_tokens: int,
                     **options) -> GenerationCost:
    """Prefill, decode steps and re-running under the analyzer's ``options`` (profile, network, batch, ...)."""
    from ..cost.analyzer import analyze

    batch = options.pop("batch", 1)
    step_inputs = _decode_inputs(programs, batch)
    decode_shapes = SymbolicShapes(programs.decode, step_inputs)
    rerun_shapes = SymbolicShapes(gm, [((batch, None), torch.long)])

    def price(program, metas, context) -> StepCost:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unsupported ops are reported by the main cost table
            report = analyze(program, seq_len=context, batch=batch, metas=metas, **options)
        return StepCost(context, report.rounds, report.bytes, report.latency_s)

    prefill_step = price(programs.prefill, None, prompt_tokens)
    prefill = Totals()
    prefill.add(prefill_step)
    total = Totals()
    total.add(prefill_step)
    decode = []
    for context in range(prompt_tokens + 1, prompt_tokens + new_tokens):
        step = price(programs.decode, decode_shapes.at(context - 1), context)  # the cache holds context - 1 rows
        decode.append(step)
        total.add(step)
    rerun, rerun_steps = Totals(), []
    for context in range(prompt_tokens, prompt_tokens + new_tokens):
        step = price(gm, rerun_shapes.at(context), context)
        rerun_steps.append(step)
        rerun.add(step)
    cost = GenerationCost(prompt_tokens, new_tokens, prefill, decode, total, rerun)
    cost.rerun_steps = rerun_steps
    return cost


def _decode_inputs(programs: GenerationPrograms, batch: int) -> list[tuple[tuple, torch.dtype]]:
    """The decode step's placeholders: one new token, then each cache tensor with a symbolic row count."""
    with torch.no_grad():
        _, *cache = programs.prefill(torch.zeros(1, 2, dtype=torch.long))
    inputs = [((batch, 1), torch.long)]
    for entry, tensor in zip(programs.cache, cache):
        shape = [batch] + list(tensor.shape[1:])
        shape[entry.seq_dim] = None
        inputs.append((tuple(shape), tensor.dtype))
    return inputs
