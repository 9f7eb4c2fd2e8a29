"""The registry of named passes: what a pass file imports to declare itself.

    @register_pass("remove-layernorm", preserves_computation=False, summary="...", phase=Phase.REWRITE)
    def remove_layernorm(gm, replace: str = "none") -> PassResult: ...

A pass returns a ``PassResult``; ``Phase`` places it in a pipeline. The pass manager
(``pass_manager``) imports every pass and runs pipelines over ``PASSES``; a pass never imports the
manager, so the two do not import each other.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable

import torch.fx as fx

from .capturing import clone_graph_module, remove_dead_code
from .pass_options import Option, check_options, option_schema


@dataclass
class PassResult:
    """What one pass returns: the new graph module and how many rewrites it made."""

    graph_module: fx.GraphModule
    changed: int
    notes: list[str] = field(default_factory=list)


class Phase(IntEnum):
    """Where a pass runs in a pipeline. The manager owns the order; a pass only names its phase.

    A pipeline is stably sorted by phase: passes of one phase keep the order the user wrote. The
    order follows what each phase needs from the ones before it:

    * CANONICALIZE: one spelling per op (expanded attention, no no-op casts) for everything after.
    * REWRITE: architecture changes of norms and FFN activations (remove-layernorm, gelu-to-*).
    * ATTENTION_HEADS: per-head decisions measured on the graph as rewritten so far (linearize-heads
      needs the attention softmaxes, so it precedes the passes that replace them).
    * ATTENTION: replacements of the remaining attention softmaxes (ReLU, quadratic, max-free).
    * SCALE: learnable reparametrizations that are identities at init (scale-ffn).
    * PRUNE: removal of whole sub-blocks, after they were scaled.
    * FOLD: fold-linear, once no nonlinearity is left to separate two linear maps.
    * INSTRUMENT: training-only outputs (entropy-hooks), on the final architecture.
    """

    CANONICALIZE = 0
    REWRITE = 10
    ATTENTION_HEADS = 20
    ATTENTION = 30
    SCALE = 40
    PRUNE = 50
    FOLD = 60
    INSTRUMENT = 70


@dataclass(frozen=True)
class PassInfo:
    name: str
    run: Callable[..., PassResult]  # run(gm, **options): clones gm first, never mutates it
    preserves_computation: bool
    summary: str
    phase: Phase = Phase.REWRITE
    options: tuple[str, ...] = ()  # the option names
    schema: dict[str, Option | None] = field(default_factory=dict)  # name -> Option (None: unchecked)
    once: str = ""  # why the pass may run only once in a pipeline ("" : it is idempotent)


PASSES: dict[str, PassInfo] = {}


def register_pass(name: str, *, preserves_computation: bool, summary: str, phase: Phase = Phase.REWRITE,
                  options: dict | tuple[str, ...] = (), once: str = ""):
    """Decorator: register ``fn(gm, **options) -> PassResult``; the registered callable clones ``gm`` first.

    ``phase`` places the pass in a pipeline (see ``Phase``); passes never name each other. ``options``
    maps each option name to its type or ``pass_options.Option`` (type, range, choices), checked when a
    pipeline is parsed (a tuple of bare names is accepted unchecked). ``once``: why the pass is not
    idempotent; a pipeline that names it twice is refused.
    """
    schema = option_schema(options)

    def decorate(fn):
        @functools.wraps(fn)
        def run(gm: fx.GraphModule, **kwargs) -> PassResult:
            kwargs = check_options(name, schema, kwargs)
            result = fn(clone_graph_module(gm), **kwargs)
            remove_dead_code(result.graph_module)
            return result

        PASSES[name] = PassInfo(name, run, preserves_computation, summary, Phase(phase), tuple(schema), schema, once)
        return run

    return decorate
