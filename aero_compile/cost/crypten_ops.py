"""The CrypTen program of each op kind, and a two-party run that measures its rounds and bytes.

These are the programs the crypten profile is calibrated on (``aero-compile calibrate crypten``) and
that the tests re-measure. Model parameters are secret-shared (CrypTen's ``model.encrypt()``), so a
product with a weight is a Beaver multiplication of both operands, and LayerNorm's gamma is a
secret product too. Statistics are rank 0's ``get_communication_stats()`` (see ``cost/__init__``).
"""

from __future__ import annotations

import math
import time

import torch

# kind -> (program(crypten, x, extra), input domain). ``extra`` is a second secret operand where the
# op has one (products, gamma of a norm). Domains keep inputs inside each function's valid range.
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def _layernorm(crypten, x, gamma):
    centred = x - x.mean(dim=-1, keepdim=True)
    inv_std = (centred.square().mean(dim=-1, keepdim=True) + 1e-5).inv_sqrt()
    return centred * inv_std * gamma  # + beta: a local addition


def _rmsnorm(crypten, x, gamma):
    inv_rms = (x.square().mean(dim=-1, keepdim=True) + 1e-6).inv_sqrt()
    return x * inv_rms * gamma


def _gelu_tanh(crypten, x, _):
    inner = (x + x.square() * x * 0.044715) * _SQRT_2_OVER_PI
    return x * (inner.tanh() + 1) * 0.5


PROGRAMS = {
    "relu": (lambda c, x, _: x.relu(), "normal"),
    "gelu": (_gelu_tanh, "normal"),
    "silu": (lambda c, x, _: x * x.sigmoid(), "normal"),
    "softmax": (lambda c, x, _: x.softmax(-1), "normal"),
    "max": (lambda c, x, _: x.max(dim=-1)[0], "normal"),
    "layernorm": (_layernorm, "normal"),
    "rmsnorm": (_rmsnorm, "normal"),
    "exp": (lambda c, x, _: x.exp(), "normal"),
    "log": (lambda c, x, _: x.log(), "positive"),
    "tanh": (lambda c, x, _: x.tanh(), "normal"),
    "sigmoid": (lambda c, x, _: x.sigmoid(), "normal"),
    "erf": (lambda c, x, _: x.erf(), "normal"),
    "trig": (lambda c, x, _: x.cos(), "normal"),
    "rsqrt": (lambda c, x, _: x.inv_sqrt(), "positive"),
    "div": (lambda c, x, y: x * y.reciprocal(), "positive"),
    "pow": (lambda c, x, _: x.square(), "normal"),
    "compare": (lambda c, x, _: x.ge(0.0), "normal"),
    "mul": (lambda c, x, y: x * y, "normal"),
    "matmul": (lambda c, x, y: x.matmul(y), "normal"),
}
# Kinds whose rounds depend on the reduced length: measured per length.
BY_LENGTH = ("softmax", "max")
# Kinds whose second operand has the shape of the input (else: [length] for norms, [length, width] for matmul).
_SAME_SHAPE_EXTRA = ("div", "mul")
_NORMS = ("layernorm", "rmsnorm")


def make_inputs(kind: str, shape: tuple[int, ...], width: int = 0, seed: int = 0):
    """Plaintext inputs of a measurement: (x, extra or None)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator)
    if PROGRAMS[kind][1] == "positive":
        x = x.abs() + 0.5
    extra = None
    if kind in _SAME_SHAPE_EXTRA:
        extra = torch.rand(shape, generator=generator) + 0.5
    elif kind in _NORMS:
        extra = torch.ones(shape[-1])
    elif kind == "matmul":
        extra = torch.randn(shape[-1], width, generator=generator)
    return x, extra


def measure_in_party(cases: list[tuple]) -> list[dict]:
    """Run inside a CrypTen party: each (kind, shape, width) once, with communication statistics on."""
    from aero_compile.targets.crypten.compat import import_crypten

    crypten = import_crypten()
    import crypten.communicator as comm

    crypten.cfg.communicator.verbose = True
    results = []
    for kind, shape, width in cases:
        x, extra = make_inputs(kind, tuple(shape), width)
        secret_x = crypten.cryptensor(x)
        secret_extra = crypten.cryptensor(extra) if extra is not None else None
        comm.get().reset_communication_stats()
        started = time.perf_counter()
        PROGRAMS[kind][0](crypten, secret_x, secret_extra)
        seconds = time.perf_counter() - started
        stats = comm.get().get_communication_stats()
        results.append({"kind": kind, "shape": list(shape), "width": width, "rounds": int(stats["rounds"]),
                        "bytes": int(stats["bytes"]), "seconds": round(seconds, 6)})
    return results


def measure(cases: list[tuple]) -> list[dict]:
    """Measure (kind, shape, width) cases between two CrypTen parties (processes); rank 0's statistics."""
    from aero_compile.targets.crypten.compat import import_crypten

    import_crypten()
    import crypten.mpc as mpc

    per_rank = mpc.run_multiprocess(world_size=2)(measure_in_party)(cases)
    if not per_rank or per_rank[0] is None:
        raise RuntimeError("the CrypTen parties returned no measurements")
    return per_rank[0]
