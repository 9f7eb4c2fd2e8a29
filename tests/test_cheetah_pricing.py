"""How the spu-cheetah profile prices what a line cannot: matrix products per ciphertext each way
(cost/cheetah_packing.py, SPU's block search), elementwise ops by measured points (profiles.bytes_at)."""

from __future__ import annotations

import pytest

from aero_compile.cost.cheetah_packing import dot_ole_plan, secret_product_ciphertexts, submatrix_shape


def dot_ole_ciphertexts(m: int, k: int, n: int) -> tuple[int, int]:
    return dot_ole_plan(m, k, n)[:2]
from aero_compile.cost.profiles import Profile, bytes_at


def test_a_small_product_is_one_ciphertext_each_way_whatever_its_size():
    # everything of an [m x k] . [k x n] with m*k, k*n <= 8192 packs into one polynomial per side
    for m, k, n in ((2, 64, 64), (16, 128, 32), (32, 64, 128)):
        assert dot_ole_ciphertexts(m, k, n) == (1, 1)


def test_blocks_fit_a_polynomial_and_the_counts_follow_the_shape():
    for m, k, n in ((128, 768, 3072), (128, 50257, 768), (64, 256, 256)):
        d0, d1, d2 = submatrix_shape(m, k, n, False)
        assert d0 * d1 <= 8192 and d1 * d2 <= 8192 and d0 <= m and d1 <= k and d2 <= n
    # the encrypting side is the one with fewer polynomials: a long contraction is sent-heavy,
    # a wide output response-heavy
    sent_heavy, response_heavy = dot_ole_ciphertexts(128, 1024, 64), dot_ole_ciphertexts(128, 64, 1024)
    assert sent_heavy[0] > sent_heavy[1] and response_heavy[1] > response_heavy[0]
    # doubling the output width of a large product doubles what comes back, not what is sent
    narrow, wide = dot_ole_ciphertexts(128, 768, 768), dot_ole_ciphertexts(128, 768, 1536)
    assert wide[0] == narrow[0] and wide[1] == 2 * narrow[1]


def test_a_secret_product_runs_two_dot_oles_per_matrix_and_one_block_comes_back_unpacked():
    one = dot_ole_ciphertexts(32, 16, 32)  # two result blocks: packed
    assert secret_product_ciphertexts(32, 16, 32, products=4) == {
        "he_sent_ciphertexts": 2 * 4 * one[0], "he_response_ciphertexts": 2 * 4 * one[1], "he_unpacked_responses": 0,
        "he_unpacked_coefficients": 0}
    single = secret_product_ciphertexts(16, 16, 16, products=4)  # one block: nothing to pack
    # an unpacked response keeps the result's coefficients only: 16 x 16 per DotOLE, two per product
    assert single == {"he_sent_ciphertexts": 8, "he_response_ciphertexts": 0, "he_unpacked_responses": 8,
                      "he_unpacked_coefficients": 2 * 4 * 16 * 16}


def test_measured_points_are_interpolated_and_extrapolation_is_flagged():
    points = [[128, 1000], [1024, 4000], [4096, 10000]]
    assert bytes_at(points, 1024) == (4000.0, False)
    assert bytes_at(points, 2560) == (7000.0, False)  # halfway between 1024 and 4096
    assert bytes_at(points, 8192) == (18000.0, True)  # the last segment's line, flagged
    # below the first point: the first segment's line where it costs something at zero (a per-call cost:
    # cheetah's softmax, measured ~10 MB at 18 elements in a decode step) ...
    assert bytes_at(points, 64) == (pytest.approx(1000 - 64 * 3000 / 896), True)
    # ... else the first point scaled, never a negative intercept
    assert bytes_at([[128, 1000], [1024, 20000]], 64) == (500.0, True)
    assert bytes_at(points, 0) == (0.0, False)


def test_a_profile_entry_with_points_prices_by_them():
    profile = Profile("t", {"ops": {"gelu": {"rounds": {"calls": 90},
                                             "bytes_points": {"feature": "elements", "points": [[100, 1e6], [300, 2e6]]}}}})
    cost = profile.cost("gelu", {"calls": 1, "elements": 200})
    assert (cost.rounds, cost.bytes, cost.approximate) == (90, pytest.approx(1.5e6), False)



def test_dot_ole_work_counts_what_cheetah_dot_runs_derived_by_hand():
    """Counts of one DotOLE, each worked out from SPU 0.9.5's cheetah_dot.cc / matmat_prot.cc / packlwes.cc."""
    from aero_compile.cost.cheetah_packing import dot_ole_work

    # [2 x 64] . [64 x 64]: the block (2, 64, 64) holds it all: one ciphertext each way, unpacked
    assert dot_ole_work(2, 64, 64) == {"encrypted": 1, "plain": 1, "ct_pt_products": 1, "result_blocks": 1,
                                       "automorphisms": 0, "responses": 1}
    # [32 x 256] . [256 x 64]: block (32, 256, 1): the LHS is 1 polynomial (encrypted), the RHS 64; 64 result
    # blocks, interleaved with gap d1 = 256 into one: butterfly levels h = 128, 64, ..., 1 merge
    # min(live, h) pairs each: 64 + 64 + 32 + 16 + 8 + 4 + 2 + 1 = 191 automorphisms
    assert submatrix_shape(32, 256, 64, False) == (32, 256, 1)
    assert dot_ole_work(32, 256, 64) == {"encrypted": 1, "plain": 64, "ct_pt_products": 64, "result_blocks": 64,
                                         "automorphisms": 191, "responses": 1}
    # [128 x 64] . [64 x 1024]: block (128, 64, 1): 1,024 result blocks in 16 full groups of gap 64, 63 each
    assert submatrix_shape(128, 64, 1024, False) == (128, 64, 1)
    assert dot_ole_work(128, 64, 1024)["automorphisms"] == 16 * 63
    assert dot_ole_work(128, 64, 1024)["responses"] == 16
    # [1 x 1024] . [1024 x 16]: d1 = 1024 >= m n = 16, so PackLWEs: 16 LWEs packed by a butterfly of
    # 8 + 4 + 2 + 1 automorphisms, then a trace of log2(8192 / 16) = 9
    assert dot_ole_plan(1, 1024, 16)[2] == "lwes"
    assert dot_ole_work(1, 1024, 16)["automorphisms"] == 15 + 9


def test_secret_product_work_sums_both_cross_terms_per_matrix():
    from aero_compile.cost.cheetah_packing import dot_ole_work, secret_product_work

    one = dot_ole_work(32, 256, 64)
    work = secret_product_work(32, 256, 64, products=4)  # 4 heads: SPU's DotGeneral loops over them
    assert work["he_polynomials"] == 2 * 4 * (one["encrypted"] + one["plain"]) == 2 * 4 * 65
    assert work["he_automorphisms"] == 2 * 4 * 191 and work["he_responses"] == 2 * 4 * 1
    assert work["he_ct_pt_products"] == 2 * 4 * 64 and work["he_result_blocks"] == 2 * 4 * 64
    assert work["result_elements"] == 4 * 32 * 64  # truncated once per product, not per cross term
    # seconds do not follow MACs: equal MACs, 8x the result blocks and automorphisms
    deep, wide = secret_product_work(128, 1024, 64), secret_product_work(128, 64, 1024)
    assert wide["he_automorphisms"] > 7 * deep["he_automorphisms"] and wide["he_polynomials"] < deep["he_polynomials"]
