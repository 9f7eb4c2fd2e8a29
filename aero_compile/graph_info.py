"""What the compiler knows about a captured model beyond its graph: one typed record in ``gm.meta``.

    from aero_compile.graph_info import graph_info, set_graph_info
    info = graph_info(gm)                 # GraphInfo(model="gpt2", vocab_size=50257, max_seq_len=1024, ...)
    info.check_seq_len(256, "--seq-len")  # AeroError: "--seq-len 256 exceeds the model's context of ..."
    set_graph_info(gm, temperature="head")

``capture`` fills it; the entropy-hooks pass records its outputs in it. The record is frozen and
replaced, never edited: a structural clone (``capturing.clone_graph_module``) shares its meta values
with the module it came from, so writing into one record would change both graphs' metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch.fx as fx

from .errors import AeroError

META_KEY = "aero"  # the one key of gm.meta this package writes


@dataclass(frozen=True)
class EntropyOutput:
    """One entropy output of the entropy-hooks pass: the attention softmax it measures, per head."""

    layer: int
    heads: int
    softmax: str  # the softmax node's name


@dataclass(frozen=True)
class GraphInfo:
    """Model-level facts the graph cannot say by itself."""

    model: str | None = None  # the name it was loaded by (a built-in, a path)
    vocab_size: int | None = None  # token ids lie in [0, vocab_size)
    max_seq_len: int | None = None  # the context length, where the model's config says it
    entropy_outputs: tuple[EntropyOutput, ...] = ()  # entropy-hooks' outputs after the logits, in order
    temperature: str = "none"  # entropy-hooks' learnable softmax temperature: none, head or position

    def check_seq_len(self, seq_len: int, what: str = "seq_len", hint: str = "") -> None:
        """Raise a one-line AeroError when ``seq_len`` tokens exceed the model's context (if known)."""
        if self.max_seq_len and seq_len > self.max_seq_len:
            advice = f": {hint}" if hint else ""
            raise AeroError(f"{what} {seq_len} exceeds the model's context of {self.max_seq_len}{advice}")


def graph_info(gm: fx.GraphModule) -> GraphInfo:
    """The record of ``gm`` (an empty one for a graph that was never captured)."""
    return getattr(gm, "meta", {}).get(META_KEY) or GraphInfo()


def set_graph_info(gm: fx.GraphModule, **changes) -> GraphInfo:
    """Store ``gm``'s record with ``changes`` applied (a new record; the old one is left as it was)."""
    info = replace(graph_info(gm), **changes)
    gm.meta[META_KEY] = info
    return info
