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
64-bit ring (polynomial degree 8192, packing enabled), and ``rlwe/packlwes.cc`` for how many automorphisms
the packing applies (``dot_ole_work``: the HE operations a product's compute seconds follow).
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


def _interleave_automorphisms(count: int, gap: int) -> int:
    """Automorphisms BumbleBee's interleave (``PackingHelper::doPackingRLWEs``) applies to pack ``count`` <= gap
    ciphertexts into one: log2(gap) butterfly levels, level h = gap/2, ..., 1 merging pairs (i, i + h) for
    i < h, one automorphism per pair with a non-empty member (count - 1 for a full group, log2(gap) for one)."""
    automorphisms, live, half = 0, count, gap // 2
    while half >= 1:
        live = min(live, half)
        automorphisms += live
        half //= 2
    return automorphisms


def _pack_lwes_automorphisms(values: int, degree: int = POLY_DEGREE) -> int:
    """Automorphisms Chen et al.'s PackLWEs (``doPackingLWEs``, with its trace) takes to pack ``values`` <=
    degree LWE ciphertexts, padded to the next power of two, into one: the butterfly's, then log2(degree / padded)."""
    padded = 1 << max(values - 1, 0).bit_length()
    return _interleave_automorphisms(values, padded) + (degree // padded).bit_length() - 1


@lru_cache(maxsize=4096)
def dot_ole_work(m: int, k: int, n: int) -> dict[str, int]:
    """The HE operations of one DotOLE of [m x k] . [k x n] (``cheetah_dot.cc``, ``matmat_prot.cc``), per party role.

    The encrypting party encodes its operand in blocks (``encrypted`` polynomials), encrypts each
    (SymmetricRLWEEncrypt: NTTs of the message and noise) and later decrypts ``responses`` ciphertexts
    (NTT, decrypt, inverse NTT, modulus-down of every coefficient). The other party NTTs its own blocks
    (``plain`` polynomials), runs ``ct_pt_products`` = b0 b1 b2 fused plaintext x ciphertext multiply-adds
    (MatMatProtocol::DoCompute), takes each of the ``result_blocks`` = b0 b2 products out of NTT form, packs
    them (``automorphisms``, each a key switch) into ``responses`` ciphertexts and masks each (H2A: an
    encryption of zero and a random polynomial) before sending it."""
    _, _, packing = dot_ole_plan(m, k, n)
    d0, d1, d2 = submatrix_shape(m, k, n, packing == "none")
    b0, b1, b2 = _ceil_div(m, d0), _ceil_div(k, d1), _ceil_div(n, d2)
    blocks = b0 * b2
    if packing == "rlwes":  # consecutive groups of d1 result blocks, one ciphertext each
        full, rest = divmod(blocks, d1)
        automorphisms = full * _interleave_automorphisms(d1, d1) + (_interleave_automorphisms(rest, d1) if rest else 0)
        responses = _ceil_div(blocks, d1)
    elif packing == "lwes":  # chosen only when d1 >= m n: one output ciphertext
        automorphisms, responses = _pack_lwes_automorphisms(m * n), _ceil_div(m * n, POLY_DEGREE)
    else:
        automorphisms, responses = 0, blocks
    return {"encrypted": min(b0 * b1, b1 * b2), "plain": max(b0 * b1, b1 * b2), "ct_pt_products": b0 * b1 * b2,
            "result_blocks": blocks, "automorphisms": automorphisms, "responses": responses}


def secret_product_work(m: int, k: int, n: int, products: int = 1) -> dict[str, float]:
    """Compute features of ``products`` secret x secret [m x k] . [k x n] products, what their seconds follow
    (measured between two processes, ``targets/spu/process_timing.py``).

    SPU's MatMulAA runs the two cross terms x0.y1 and x1.y0 as two DotOLEs at once, one in each direction
    (each party encrypts for one and computes for the other), adds the local x0.y0 + x1.y1 (a ring matrix
    product, ``macs``), and the fixed-point result is truncated (``result_elements``: an OT-based protocol
    per element). A batched product (one per attention head) is a loop of single products (SPU's
    DotGeneral). Each HE count below is the sum over both DotOLEs (``dot_ole_work``):

    * ``he_polynomials``: polynomials encoded and NTT'd, encrypted or not (encrypted + plain);
    * ``he_encryptions``: ciphertexts encrypted and sent (one encryption of zero more per response, H2A);
    * ``he_ct_pt_products``: plaintext x ciphertext multiply-adds in NTT form (b0 b1 b2);
    * ``he_result_blocks``: result ciphertexts taken out of NTT form before packing (b0 b2);
    * ``he_automorphisms``: the packing's automorphisms (key switches), counted as SPU's packing runs them;
    * ``he_responses``: ciphertexts masked, sent back, decrypted and decoded.

    Seconds do not follow MACs: [128 x 1024] . [1024 x 64] (8.4M MACs, 256 result blocks) ran 4x faster than
    [128 x 64] . [64 x 1024] (8.4M MACs, 2,048 result blocks)."""
    work = dot_ole_work(max(m, 1), max(k, 1), max(n, 1))
    twice = 2.0 * products
    return {"he_polynomials": twice * (work["encrypted"] + work["plain"]),
            "he_encryptions": twice * work["encrypted"],
            "he_ct_pt_products": twice * work["ct_pt_products"],
            "he_result_blocks": twice * work["result_blocks"],
            "he_automorphisms": twice * work["automorphisms"],
            "he_responses": twice * work["responses"],
            "result_elements": float(products * m * n)}
