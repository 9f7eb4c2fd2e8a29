"""The private-inference engines, registered once each: ``ENGINES[name]`` says everything about one.

    from aero_compile.targets.private.engines import ENGINES, engine
    engine("spu").runner()            # targets.spu.run_private
    engine("crypten").calibrator()    # what ``aero-compile calibrate crypten`` runs

An :class:`Engine` names, as "module:attribute" strings under ``aero_compile.targets`` (imported only
on use, so ``--help`` never loads CrypTen, jax or SPU):

* ``runner``: ``run_private(graphs, seq_len=..., timeout_s=..., **engine_options) -> measured``;
* ``dispatch``: the module holding its dispatch table (how a secret node becomes its operations);
* ``calibrator``: ``main(argv)`` of ``aero-compile calibrate NAME``;
* ``cli``: its CLI module, with ``add_arguments(parser)`` (its own options, in its own group),
  ``check(args)`` (its options, before anything runs), ``run(args, graphs, result)`` (the run,
  printing its table and filling ``result.report.measured``), ``profile_for(args)`` (the cost
  profile a run with these options is priced by), ``given_options(args)`` (its flags the command line
  set) and ``multihost_flag(args)`` (the flag that made this run one party between hosts, or None);
* ``generation``: ``generate(gm, prompt_ids, new_tokens, args, programs) -> dict`` of ``--run-private
  --generate N`` on one machine (tokens, logits per step, decode per step, provider, note);
* ``profiles``: the cost profiles its runs may be checked against (``--protocol`` must be one).

The shared options (``--run-private``, ``--engine``, ``--party``, ...) are ``options.py``'s; an engine
never reads another engine's options.

Adding a third engine NAME touches: ``targets/NAME/`` (its runner, dispatch, calibrate and
cli_extension modules), one ``Engine(...)`` entry below, and its cost profile(s)
``aero_compile/cost/data/NAME-*.json``. No file of ``targets/crypten`` or ``targets/spu`` changes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from aero_compile.errors import AeroError


@dataclass(frozen=True)
class Engine:
    """One MPC engine: where its runner, dispatch table, calibrator and CLI live, and its cost profiles."""

    name: str
    title: str  # as a user reads it: "CrypTen", "SPU"
    runner: str
    dispatch: str
    calibrator: str
    cli: str
    profiles: tuple[str, ...]
    generation: str = ""  # "module:function" of ``--run-private --generate`` on one machine ("": none)
    multihost_generation: bool = False  # whether its parties on separate hosts also run ``--generate``

    def _load(self, target: str):
        module_name, _, attribute = target.partition(":")
        module = importlib.import_module(f"aero_compile.targets.{module_name}")
        return getattr(module, attribute) if attribute else module

    def run_private(self):
        """The engine's ``run_private`` function."""
        return self._load(self.runner)

    def dispatch_module(self):
        return self._load(self.dispatch)

    def calibrate(self):
        """The engine's calibration entry point: ``main(argv) -> int``."""
        return self._load(self.calibrator)

    def cli_module(self):
        return self._load(self.cli)

    def generate(self):
        """The engine's private generation entry point (AeroError if it has none)."""
        if not self.generation:
            raise AeroError(f"--run-private --generate does not run under --engine {self.name}")
        return self._load(self.generation)


ENGINES: dict[str, Engine] = {}


def register_engine(engine: Engine) -> Engine:
    """Add ``engine`` to ENGINES (once: a second engine of the same name is a programming error)."""
    if engine.name in ENGINES:
        raise ValueError(f"engine '{engine.name}' is registered twice")
    ENGINES[engine.name] = engine
    return engine


register_engine(Engine(
    name="crypten", title="CrypTen", runner="crypten.runner:run_private", dispatch="crypten.dispatch",
    calibrator="crypten.calibrate_command:main", cli="crypten.cli_extension", profiles=("crypten",),
    generation="crypten.cli_extension:generate", multihost_generation=True))
register_engine(Engine(
    name="spu", title="SPU", runner="spu.runner:run_private", dispatch="spu.dispatch",
    calibrator="spu.calibrate:main", cli="spu.cli_extension",
    profiles=("spu-cheetah", "spu-semi2k", "spu-aby3"), generation="spu.cli_extension:generate"))

DEFAULT_ENGINE = "crypten"


def engine(name: str) -> Engine:
    """The registered engine ``name``; a one-line AeroError listing the engines otherwise."""
    if name not in ENGINES:
        raise AeroError(f"unknown engine '{name}': engines are {', '.join(ENGINES)}")
    return ENGINES[name]
