"""How many ring-LWE ciphertexts SPU's cheetah ships for one secret x secret matrix product.

Cheetah multiplies two secret-shared matrices [m x k] . [k x n] as (x0 + x1)(y0 + y1): the local terms in the
clear, each cross term x0.y1 and x1.y0 by one HE "DotOLE". There one party encrypts its matrix in
blocks of d0 x d1 (or d1 x d2) packed into degree-8192 polynomials and sends them; the other multiplies
by its own plaintext blocks and returns the (packed) products. The block shape is chosen by a cost
search (``GetSubMatShape``) and the response is packed one of three ways; the number of ciphertexts in
each direction follows from m, k, n alone, which is what makes matrix products priceable per ciphertext:
small products cost one ciphertext each way whatever their size, large ones grow with the blocks.

The arithmetic below follows SPU's ``libspu/mpc/cheetah/arith/matmat_prot.cc`` (GetSubMatShape) and
``cheetah_dot.cc`` (doDotOLE: packing choice, which side encrypts, how many ciphertexts come back) for a
64-bit ring (polynomial degree 8192, packing enabled).
"""

from __future__ import annotations

from functools import lru_cache

POLY_DEGREE = 8192  # cheetah's DotOLE on a 64-bit ring (DecideSEALParameters)
_BANDWIDTH_PRICE, _CPU_PRICE = 1000.0, 1.0  # the weights of SPU's block-shape cost search


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@lru_cache(maxsize=4096)
def submatrix_shape(m: int, k: int, n: int, disable_pack: bool, degree: int = POLY_DEGREE) -> tuple[int, int, int]:
    """The block (d0, d1, d2) SPU's cost search picks for an [m x k] . [k x n] product."""
    best, min_cost = (0, 0, 0), float("inf")
    for d0 in range(1, min(degree, m) + 1):
        b0 = _ceil_div(m, d0)
        d1 = 1
        while d1 <= k and d0 * d1 <= degree:
            b1 = _ceil_div(k, d1)
            d2 = min(n, degree // d0 // d1)
            b2 = _ceil_div(n, d2)
            sent = min(b0, b2) * b1
            response = _ceil_div(b0 * b2, d1)
            automorphisms = 0 if disable_pack else _ceil_div(m * n, degree) * d1
            cost = (sent + response) * _BANDWIDTH_PRICE + automorphisms * _CPU_PRICE + b0 * b1 * b2 * _CPU_PRICE / 10.0
            if cost <= min_cost:
                min_cost, best = cost, (d0, d1, d2)
            d1 = d1 + 1 if disable_pack else d1 * 2
    return best


@lru_cache(maxsize=4096)
def dot_ole_plan(m: int, k: int, n: int) -> tuple[int, int, str]:
    """(ciphertexts sent by the encrypting party, ciphertexts returned, packing: none | rlwes | lwes) of one
    DotOLE of [m x k] . [k x n]."""
    d0, d1, d2 = submatrix_shape(m, k, n, False)
    b0, b2 = _ceil_div(m, d0), _ceil_div(n, d2)
    if b0 * b2 <= 1:
        packing = "none"  # one resulting ciphertext: nothing to pack
    else:
        packing = "rlwes" if d1 < m * n else "lwes"
    d0, d1, d2 = submatrix_shape(m, k, n, packing == "none")
    b0, b1, b2 = _ceil_div(m, d0), _ceil_div(k, d1), _ceil_div(n, d2)
    sent = min(b0 * b1, b1 * b2)  # the side with fewer polynomials is encrypted and sent
    if packing == "rlwes":
        response = _ceil_div(b0 * b2, d1)
    elif packing == "lwes":
        response = _ceil_div(m * n, POLY_DEGREE)
    else:
        response = b0 * b2
    return sent, response, packing


def secret_product_ciphertexts(m: int, k: int, n: int, products: int = 1) -> dict[str, float]:
    """Features of ``products`` secret x secret [m x k] . [k x n] products: two DotOLEs each (x0.y1, x1.y0).

    A product whose result is one block comes back unpacked, in a ciphertext measured ~half the size of a
    packed one (``he_unpacked_responses``); packed responses are ``he_response_ciphertexts``. An unpacked
    response keeps only the result's m x n coefficients (SPU zeroes the others before sending, and its
    serialization compresses them away), so it also grows with them (``he_unpacked_coefficients``):
    measured 629.5 / 634.3 / 643.9 KB for 128 / 256 / 512, 19 B per coefficient per response. A decode
    step's attention products keep 4 to 64; priced at the calibration's 128 to 512 they came out 2% high.
    """
    sent, response, packing = dot_ole_plan(max(m, 1), max(k, 1), max(n, 1))
    unpacked = packing == "none"
    return {"he_sent_ciphertexts": float(2 * sent * products),
            "he_response_ciphertexts": 0.0 if unpacked else float(2 * response * products),
            "he_unpacked_responses": float(2 * response * products) if unpacked else 0.0,
            "he_unpacked_coefficients": float(2 * max(m, 1) * max(n, 1) * products) if unpacked else 0.0}


def secret_product_work(m: int, k: int, n: int, products: int = 1) -> dict[str, float]:
    """Compute features of ``products`` secret x secret [m x k] . [k x n] products (two DotOLEs each), what
    their seconds follow (measured between two processes, ``targets/spu/process_timing.py``):

    * ``he_result_blocks``: result ciphertexts before packing (b0 x b2 blocks per DotOLE), each an HE
      product summed over its b1 input blocks, then decrypted or packed;
    * ``he_automorphisms``: the Galois automorphisms packing them takes (ceil(m n / degree) x d1; none when
      one block comes back unpacked), the term SPU's own block search prices as CPU.

    Seconds do not follow MACs: [128 x 1024] . [1024 x 64] (8.4M MACs, 128 blocks) ran as fast as
    [32 x 256] . [256 x 64] (0.5M MACs, 64 blocks of d1 = 256)."""
    _, _, packing = dot_ole_plan(max(m, 1), max(k, 1), max(n, 1))
    d0, d1, d2 = submatrix_shape(max(m, 1), max(k, 1), max(n, 1), packing == "none")
    blocks = _ceil_div(max(m, 1), d0) * _ceil_div(max(n, 1), d2)
    automorphisms = 0 if packing == "none" else _ceil_div(m * n, POLY_DEGREE) * d1
    return {"he_result_blocks": float(2 * blocks * products), "he_automorphisms": float(2 * automorphisms * products)}
