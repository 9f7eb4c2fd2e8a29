"""Lower an fx graph to a jax function of the parties' secret inputs, and compile it with SPU.

    program = SpuProgram(gm, batch=1, seq_len=8)
    program.executable                      # libspu.Executable (compiled once; protocol independent)
    program.client_inputs(input_ids)        # [one_hot(ids)]: the client's secret input
    program.owner_inputs()                  # the owner's weights (and 1/w) that secret ops read
    program.scales                          # the owner's public rsqrt scales (the client receives them)

The graph is split by ``aero_compile.secrecy`` through ``targets.private.graph`` (the rule the cost
analyzer prices with): public values are computed in plaintext and enter the program as constants
(both parties know them: masks, rotary tables), the owner's values it reads enter as the owner's
secret inputs, the client's tokens as a secret one-hot matrix. Only secret nodes are lowered, by
``dispatch.lower_node``; public x secret is then local in SPU, as the analyzer prices it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from aero_compile.errors import AeroError
from aero_compile.fileio import atomic_path
from aero_compile.secrecy import Secrecy
from aero_compile.targets.private.graph import SecretGraph, check_token_ids, owner_shares
from aero_compile.targets.private.masks import replace_masks
from aero_compile.targets.private.dispatch import LoweringContext
from aero_compile.targets.private.norm_scaling import inv_sqrt_scales, owner_calibration_ids

from .config import SPU_MASK_VALUE
from .dispatch import lower_node


def _public(value):
    """A public value as the jax program holds it: numpy (masks made finite), Python numbers as they are."""
    if isinstance(value, torch.Tensor):
        value = replace_masks(value, SPU_MASK_VALUE)
        return value.numpy() if value.dtype != torch.bfloat16 else value.float().numpy()
    if isinstance(value, (list, tuple)):
        return type(value)(_public(v) for v in value)
    return replace_masks(value, SPU_MASK_VALUE)


def owner_scales(gm: fx.GraphModule, vocab: int, batch: int, seq_len: int) -> dict[str, float]:
    """The model owner's public rsqrt scales (``private.norm_scaling``), on tokens of its own choosing."""
    return inv_sqrt_scales(gm, owner_calibration_ids(vocab, batch, seq_len))


class SpuProgram:
    """One graph at one [batch, seq_len] as an SPU program of (one-hot tokens, owner values...)."""

    def __init__(self, gm: fx.GraphModule, *, batch: int, seq_len: int, scales: dict[str, float] | None = None):
        self.gm, self.batch, self.seq_len = gm, batch, seq_len
        self.split = SecretGraph(gm)
        self.token_nodes = self.split.token_nodes
        plain = self.split.plain_values(batch, seq_len)
        self.vocab = self.split.vocabulary_size(plain)
        owned, inverses = owner_shares(gm, self.split.secrecy, plain)
        self.owned_nodes, self.inverse_nodes = list(owned), list(inverses)
        self._owned = [owned[n].float().numpy() for n in self.owned_nodes] + \
                      [inverses[n].float().numpy() for n in self.inverse_nodes]
        self.public = {node: _public(value) for node, value in plain.items()
                       if self.split.secrecy.get(node) is Secrecy.PUBLIC and node is not self.split.input}
        self.input_names = ["tokens"] + [f"owner{i}" for i in range(len(self._owned))]
        self.scales = owner_scales(gm, self.vocab, batch, seq_len) if scales is None else scales
        self._executable = None

    # -- inputs ---------------------------------------------------------------------------------------

    def client_inputs(self, input_ids: torch.Tensor) -> list[np.ndarray]:
        check_token_ids(input_ids, self.batch, self.seq_len, self.vocab)
        return [F.one_hot(input_ids, self.vocab).float().numpy()]

    def owner_inputs(self) -> list[np.ndarray]:
        return list(self._owned)

    def input_shapes(self) -> list[tuple[int, ...]]:
        return [(self.batch, self.seq_len, self.vocab)] + [tuple(a.shape) for a in self._owned]

    # -- the jax function -----------------------------------------------------------------------------

    def function(self, tokens, *owned):
        """The private forward pass as jax: logits of the graph's first output."""
        env = _Environment(self, tokens, owned)
        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr") or not self.split.is_secret(node):
                continue
            env.secret[node] = lower_node(env, node)
        return env.secret[self.split.output]

    @property
    def executable(self):
        """The compiled SPU program (every input secret; the public constants are folded in)."""
        if self._executable is None:
            self._executable = compile_cached(self.function, self.input_shapes(), self.input_names,
                                              salt=self._constants_digest())
        return self._executable

    def _constants_digest(self) -> str:
        return constants_digest(self.gm, self.public, self.scales)


def constants_digest(gm: fx.GraphModule, public: dict, scales: dict[str, float]) -> str:
    """A hash of every public constant and scale a program folds in (the jax text may elide large ones)."""
    digest = hashlib.sha256(repr(sorted(scales.items())).encode())
    for node in gm.graph.nodes:
        if node in public:
            digest.update(node.name.encode())
            _digest_of(public[node], digest)
    return digest.hexdigest()


def _digest_of(value, digest) -> None:
    if isinstance(value, np.ndarray):
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (list, tuple)):
        for item in value:
            _digest_of(item, digest)
    else:
        digest.update(repr(value).encode())


def cache_dir() -> Path:
    """Where compiled SPU programs are kept (``AERO_SPU_CACHE``, else ~/.cache/aero-compile/spu)."""
    return Path(os.environ.get("AERO_SPU_CACHE") or Path.home() / ".cache" / "aero-compile" / "spu")


def compile_cached(function, shapes: list[tuple[int, ...]], names: list[str], salt: str = "",
                   output_names: tuple[str, ...] = ("logits",)):
    """SPU's compile of ``function`` on secret float32 inputs of ``shapes``, cached on disk by its program.

    SPU compiles a small model in seconds (2-4 s for gpt2-tiny, on one core); the key is a hash of
    the jax program's text, ``salt`` (the caller's digest of the constants it folds in) and the SPU
    version, so an equal program is compiled once per machine and a different one never hits a stale entry.
    """
    import jax
    import spu
    from spu import libspu
    from spu.utils import frontend

    examples = [np.zeros(shape, np.float32) for shape in shapes]
    text = jax.jit(function).lower(*examples).as_text()
    outputs = list(output_names)
    key = hashlib.sha256(f"{spu.__version__}\n{names}\n{salt}\n{text}{'' if outputs == ['logits'] else outputs}"
                         .encode()).hexdigest()
    path = cache_dir() / f"{key}.spu"
    if path.exists():
        executable = libspu.Executable()
        if executable.ParseFromString(path.read_bytes()):
            return executable
    executable, _ = frontend.compile(frontend.Kind.JAX, function, examples, {}, names,
                                     [libspu.Visibility.VIS_SECRET] * len(examples), lambda _: outputs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(executable.SerializeToString())
    except OSError:
        pass  # a read-only cache only costs the next run its compile
    return executable


class _Environment(LoweringContext):
    """What ``dispatch.lower_node`` reads while tracing: values by node, token views, owner inverses."""

    def __init__(self, program: SpuProgram, tokens, owned):
        self.gm, self.token_nodes, self.program = program.gm, program.token_nodes, program
        count = len(program.owned_nodes)
        self.secret = {program.split.input: tokens, **dict(zip(program.owned_nodes, owned[:count]))}
        self.inverses = dict(zip(program.inverse_nodes, owned[count:]))
        self.scales = program.scales

    def value(self, node: fx.Node):
        if node in self.secret:
            return self.secret[node]
        if node in self.program.public:
            return self.program.public[node]
        raise AeroError(f"internal: value of '{node.name}' ({self.program.split.secrecy.get(node)}) is not available")
