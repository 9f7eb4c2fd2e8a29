"""One party's SPU runtime: warm the protocol up once, then run programs on secret shares.

Cheetah sets up lazily on first use (HE keys at the first product, base OTs at the first comparison:
about 2,200 messages and 20 MB, measured, before any of the model's work). ``warm_up`` pays that on a
small program first, reported as the run's setup, so that a graph's figures are what one query costs
once the parties are connected, as the analyzer prices it.
"""

from __future__ import annotations

import numpy as np


def _warm_up_function(x, w):
    import jax
    import jax.numpy as jnp

    y = jnp.matmul(x, w)
    return jax.nn.softmax(y * x, axis=-1) + jax.lax.rsqrt(y * y + 1.0) + jax.nn.relu(y) + jnp.tanh(y)


_WARM_UP = None


def warm_up_program():
    """(executable, example inputs) of the warm-up program: a product, comparisons, exp, division, rsqrt."""
    global _WARM_UP
    if _WARM_UP is None:
        from spu import libspu
        from spu.utils import frontend

        examples = [np.full((4, 4), 0.5, np.float32), np.full((4, 4), 0.25, np.float32)]
        executable, _ = frontend.compile(frontend.Kind.JAX, _warm_up_function, examples, {}, ["x", "w"],
                                         [libspu.Visibility.VIS_SECRET] * 2, lambda outputs: ["out"])
        _WARM_UP = (executable, examples)
    return _WARM_UP


class PartySession:
    """An SPU runtime over one link context (rank ``link.rank``)."""

    def __init__(self, link, config):
        from spu import api

        self.runtime = api.Runtime(link, config)

    def run(self, executable, shares, repetitions: int = 1) -> object:
        """Run ``executable`` on this party's input shares (in input order); its output share.

        ``repetitions`` > 1: run it that many times on the same shares (the profiler logs each run; the
        online pass is what repeats, the shares are set once), the last run's output returned.
        """
        for name, share in zip(executable.input_names, shares):
            self.runtime.set_var(name, share)
        for _ in range(max(1, repetitions)):
            self.runtime.run(executable)
        output = self.runtime.get_var(executable.output_names[0])
        for name in (*executable.input_names, *executable.output_names):
            self.runtime.del_var(name)
        return output


def timed_profiles(profiles: list[dict], programs: int, repetitions: int) -> list[dict]:
    """One profile per program from the profiler's records [warm-up, program 1 x repetitions, ...]: the
    warm-up's first, then each program's median-seconds run, with its ``timing`` (every run's seconds)."""
    if len(profiles) != 1 + programs * repetitions:
        raise ValueError(f"{len(profiles)} profiles for a warm-up and {programs} programs x {repetitions}")
    grouped = [profiles[0]]
    for index in range(programs):
        runs = profiles[1 + index * repetitions: 1 + (index + 1) * repetitions]
        ranked = sorted(runs, key=lambda r: r["seconds"])
        chosen = dict(ranked[(len(runs) - 1) // 2])  # the lower median of an even count: a run that happened
        # counters of the first run, as a single run reported them (later runs may pay a silent-OT refill)
        chosen.update({k: runs[0][k] for k in ("rounds", "bytes", "sent_bytes", "received_bytes") if k in runs[0]})
        chosen["timing"] = {"repetitions": repetitions, "statistic": "median",
                            "all_seconds": [r["seconds"] for r in runs],
                            "all_rounds": [r["rounds"] for r in runs], "all_bytes": [r["bytes"] for r in runs]}
        grouped.append(chosen)
    return grouped
