"""The SPU backend: lower the rewritten fx graph to a jax function, compile it with SecretFlow SPU, run it.

    from aero_compile.targets.spu import run_private
    measured = run_private({"before": gm, "after": rewritten}, seq_len=8, protocol="cheetah")
    measured["after"]["bytes"], measured["after"]["argmax_agreement_resolvable"]

Modules: ``lowering`` (SpuProgram: the jax function over the secrecy split of ``targets.private``),
``dispatch`` (OpKind / operator-name tables to jax.numpy), ``config`` (protocols, fixed point, mask),
``session`` (one party's runtime, warm-up), ``simulator`` (parties as threads), ``party`` (parties as
processes over brpc, on one machine or several), ``profiling`` (SPU's counters from its log),
``runner`` (the measured record), ``generation`` / ``generation_party`` (prefill + decode steps in one
session, the K/V cache kept in the parties), ``cli_extension`` (``--engine spu``), ``calibrate`` (``aero-compile
calibrate spu``: the spu-cheetah profile). Nothing here imports jax or spu until it runs.
"""


def run_private(graphs, **options):
    """``runner.run_private`` (imported on use: jax and spu load only when SPU runs)."""
    from .runner import run_private as run

    return run(graphs, **options)


__all__ = ["run_private"]
