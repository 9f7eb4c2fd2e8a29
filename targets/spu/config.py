"""SPU's settings for our graphs: protocols, fixed point, and the nonlinearities' ranges.

Fixed point: the 64-bit ring with 18 fractional bits (SPU's default for FM64): a resolution of 4e-6,
values up to 2^45, which holds every activation and logit of the models we run (the attention
mask, -1e4 or -3.4e38 in the graphs, is replaced, below). The division and rsqrt protocols normalise
their input by its bit length first (SPU's f_div, f_rsqrt), so softmax sums of any length and norm
variances of any scale converge without the public rescaling CrypTen needs (``crypten.norm_scaling``).

exp is SPU's default Taylor form, (1 + x/2^8)^(2^8): exact to fixed point for x in [-20, 10], 0 for a
masked score near -64, but wrong (-1.8e6 at -1e4, measured) far below -256, as CrypTen's is. Softmax
subtracts the row max first, so a masked score becomes (mask - max): with the mask at -64, that stays
above -256 for any row whose scores span less than 192, and exp of it rounds to exactly 0.
"""

from __future__ import annotations

from aero_compile.errors import AeroError

PROTOCOLS = {  # our option name -> (libspu.ProtocolKind name, parties, what it is)
    "cheetah": ("CHEETAH", 2, "2PC: HE for products, silent OT for nonlinear ops (BumbleBee's protocol line)"),
    "semi2k": ("SEMI2K", 2, "2PC, semi-honest, Beaver triples from a trusted dealer (simulated)"),
    "aby3": ("ABY3", 3, "3PC replicated secret sharing, honest majority"),
}
FRACTION_BITS = 18
SPU_MASK_VALUE = -64.0
OWNER, CLIENT = 0, 1
ROLE_NAMES = {OWNER: "model owner", CLIENT: "client", 2: "third party"}


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise AeroError(f"unknown SPU protocol '{protocol}': use one of {', '.join(PROTOCOLS)}")


def parties(protocol: str) -> int:
    check_protocol(protocol)
    return PROTOCOLS[protocol][1]


def runtime_config(protocol: str, profile: bool = True):
    """The libspu.RuntimeConfig every party of a run uses (profiling on: it is how bytes are counted)."""
    from spu import libspu

    check_protocol(protocol)
    config = libspu.RuntimeConfig(protocol=getattr(libspu.ProtocolKind, PROTOCOLS[protocol][0]),
                                  field=libspu.FieldType.FM64, fxp_fraction_bits=FRACTION_BITS)
    config.enable_pphlo_profile = profile
    return config


def versions() -> dict[str, str]:
    """Library versions a measurement is recorded with."""
    import jax
    import spu

    return {"spu": spu.__version__, "jax": jax.__version__}
