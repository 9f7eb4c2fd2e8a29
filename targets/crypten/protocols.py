"""The MPC protocol of each nonlinearity, written with CrypTensor operations.

Call these on a CrypTensor (the secret operand); ``weight``/``bias`` may be CrypTensors (weights the
model owner shared) or public tensors. The cost analyzer's ``crypten`` profile is calibrated on these
same functions, reached through ``dispatch`` (``calibrate.py``), so predicted and measured rounds agree
op for op.

CrypTen has no GELU and no LayerNorm; its ``erf`` is a Taylor series that explodes beyond |x| ~ 2.5,
so every GELU (exact or tanh) is run in its tanh form (|error| < 1e-3 against the exact GELU); its
``var(unbiased=False)`` has the flag inverted, so LayerNorm computes the variance itself.
"""

from __future__ import annotations

import math

from aero_compile.targets.private.masks import replace_masks

# exp in CrypTen is (1 + x/256)^256: wrong (and huge) for x < -256. Softmax subtracts the row max first,
# so a masked score becomes (mask - max): a mask of -64 keeps that above -256 for any row whose scores
# span less than 192, and exp(-64) ~ 1e-28 is still exactly 0 at 16-bit fixed-point precision.
CRYPTEN_MASK_VALUE = -64.0


def safe_public_constant(value):
    """A public mask value CrypTen can compute with: anything <= MASK_VALUE (-1e4, -3.4e38, -inf) -> -64."""
    return replace_masks(value, CRYPTEN_MASK_VALUE)


def _last_dims(normalized_shape) -> list[int]:
    count = len(normalized_shape) if isinstance(normalized_shape, (list, tuple)) else 1
    return list(range(-count, 0))


def _mean_over(x, dims: list[int]):
    for dim in dims:
        x = x.mean(dim, keepdim=True)
    return x


def inv_sqrt(x, scale: float = 1.0):
    """1/sqrt(x), computed as sqrt(s)/sqrt(s x): the public power of 4 ``s`` keeps Newton convergent."""
    if scale == 1.0:
        return x.inv_sqrt()
    return (x * scale).inv_sqrt() * math.sqrt(scale)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5, scale: float = 1.0):
    """LayerNorm: mean (local), square (1 round), inv_sqrt (Newton), scale (1 round), affine (1 round).

    ``scale`` (a power of 4, see norm_scaling) multiplies the centred input by sqrt(scale) before
    squaring, which LayerNorm cannot see (eps is scaled with it) but inv_sqrt's convergence can.
    """
    dims = _last_dims(normalized_shape)
    centered = x - _mean_over(x, dims)
    if scale != 1.0:
        centered = centered * math.sqrt(scale)
    variance = _mean_over(centered.square(), dims)
    out = centered * (variance + eps * scale).inv_sqrt()
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def rms_norm(x, normalized_shape, weight=None, eps: float = 1e-6, scale: float = 1.0):
    """RMSNorm as Llama writes it: x * rsqrt(mean(x^2) + eps) * weight (``scale`` as in layer_norm)."""
    dims = _last_dims(normalized_shape)
    if scale != 1.0:
        x = x * math.sqrt(scale)
    out = x * (_mean_over(x.square(), dims) + eps * scale).inv_sqrt()
    return out * weight if weight is not None else out


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_tanh(x):
    """GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    inner = (x + x.pow(3) * 0.044715) * _GELU_C
    return (x * 0.5) * (inner.tanh() + 1.0)


def relu(x):
    """ReLU: one secure comparison, then a multiplication."""
    return x.relu()


def silu(x):
    """SiLU (swish): x * sigmoid(x)."""
    return x * x.sigmoid()


def softmax(x, dim: int):
    """Softmax as CrypTen computes it: max (log-reduction), exp, sum, reciprocal."""
    return x.softmax(dim)
