"""The K/V cache masked row by row, once: a decode step opens only its new rows and its own factor.

A generation's attention products read the cache: scores = q · K^T and mix = p · V, K and V over every
position so far. A Beaver product opens both factors minus masks, so each step would open the whole
cache again (129 x 768 values per product and layer for GPT-2 small at context 129): the cost of a step
would grow with the context and dominate it. But the cache's rows do not change once written: they are
to the steps what a weight is to the queries (``weight_masks.py``). So each row of a cached factor M
gets its own mask B_row when it first appears; M_row - B_row is opened once, in the same message as
that step's own opening (no round added), and B_row is kept. Every product with M then takes a fresh
A and C = A·B for the fixed B (all rows so far), opens x - A only and computes, locally,

    x·M = C + (x - A)·B + A·(M - B) + (x - A)·(M - B)        (M·x likewise, the factors swapped)

Why reusing B reveals nothing: weight masking's argument. Every value ever opened is masked by a
uniform ring element used for nothing else: M_row - B_row is opened once (its row never changes; a
later step reuses the opening, it does not open the row again), each x - A uses a fresh A, and C is a
fresh sharing of A·B. Two products reading the same cache (or GQA's repeated heads) mask their own
layout of it with their own B: independent masks of one value reveal nothing either.

Where B lives: as for weights. With ``tfp`` rank 0 draws B and keeps it in the clear (it sees every
triple anyway); with ``ttp`` the dealer derives each row's B from the seeds it shares with the parties
(each party draws its own share: nothing is sent) and appends it to what it keeps for that product, to
deal C = A·B for every later step; it keeps one ring element (8 bytes) per cached element for the
session.

Which products read the cache, through which dim, and how many of its rows are new: the analysis the
cost analyzer prices with (``aero_compile.secrecy.cache_factors``). ``RowMaskedFactor`` is what the
dispatch hands ``_matmul``; ``cache_matmul`` runs the product and grows the session's ``CacheRowMasks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .weight_masks import _keys, _rank


@dataclass(frozen=True)
class CacheRowMasks:
    """One party's masks of one product's cached factor: the rows masked so far, along ``dim``."""

    delta: torch.Tensor  # M - B of those rows, in the ring: public to both parties
    mask_share: torch.Tensor  # this party's share of B
    mask_plain: torch.Tensor | None  # B itself: TFP's rank 0 only (it deals the triples)
    key: int  # the dealer's name for B (ttp)
    dim: int

    @property
    def rows(self) -> int:
        return int(self.delta.size(self.dim))


@dataclass
class RowMaskedFactor:
    """A product's cached factor in one program: its CrypTensor, the masks so far, where to keep the grown ones."""

    value: object  # the CrypTensor this program computed (its first ``past_rows`` rows are the masked ones)
    masks: CacheRowMasks | None  # None: no row masked yet (the prefill)
    dim: int
    past_rows: int
    provider: str
    keep: Callable[[CacheRowMasks], None]


def cache_matmul(x, factor: RowMaskedFactor, factor_on_left: bool):
    """x @ M (or M @ x) for a secret CrypTensor x and a cached factor M: one round, opening x - A and M's new rows."""
    from crypten.mpc.primitives import ArithmeticSharedTensor

    share = factor.value._tensor.share
    past = 0 if factor.masks is None else factor.masks.rows
    if past != factor.past_rows:
        raise RuntimeError(f"internal: {past} cached rows are masked, the program expects {factor.past_rows}")
    key = next(_keys) if factor.masks is None else factor.masks.key
    new_rows = share.narrow(factor.dim, past, share.size(factor.dim) - past)
    new_share, new_plain = _draw_row_masks(key, new_rows.size(), factor.dim, factor.provider)
    masks = _grown(factor.masks, new_share, new_plain, key, factor.dim)
    x_share = x._tensor.share
    a, c = _triple(masks, x_share.size(), factor_on_left, factor.provider, share.size())
    # one opening: the new rows minus their masks (once, for every later step) and x minus a fresh mask
    masked = torch.cat([(new_rows - new_share).reshape(-1), (x_share - a).reshape(-1)])
    opened = ArithmeticSharedTensor.from_shares(masked, precision=0).reveal()
    delta_new = opened[:new_rows.numel()].reshape(new_rows.size())
    epsilon = opened[new_rows.numel():].reshape(x_share.size())
    delta = delta_new if factor.masks is None else torch.cat([factor.masks.delta, delta_new], factor.dim)
    masks = CacheRowMasks(delta, masks.mask_share, masks.mask_plain, key, factor.dim)
    factor.keep(masks)
    if factor_on_left:  # M·x = C + B·e + (M - B)·A + (M - B)·e
        product = c + torch.matmul(masks.mask_share, epsilon) + torch.matmul(delta, a)
        if _rank() == 0:
            product = product + torch.matmul(delta, epsilon)
    else:  # x·M = C + e·B + A·(M - B) + e·(M - B)
        product = c + torch.matmul(epsilon, masks.mask_share) + torch.matmul(a, delta)
        if _rank() == 0:
            product = product + torch.matmul(epsilon, delta)
    result = x._tensor.clone()
    result.share = product
    result = result.div_(x._tensor.encoder.scale)  # both factors fixed-point: one truncation, as CrypTen's matmul
    out = x.shallow_copy()
    out._tensor = result
    return out


def _draw_row_masks(key: int, size: torch.Size, dim: int, provider: str):
    """(this party's share of the new rows' B, B itself on TFP's rank 0 else None); nothing is sent."""
    from crypten.common.rng import generate_random_ring_element
    from crypten.mpc.primitives import ArithmeticSharedTensor

    if provider == "ttp":
        from crypten.mpc.provider.ttp_provider import TTPClient

        if _rank() == 0:
            TTPClient.get().ttp_request("aero_cache_rows", None, key, size, dim)
        return generate_random_ring_element(size, generator=TTPClient.get().get_generator()), None
    drawn = generate_random_ring_element(size)
    share = ArithmeticSharedTensor(drawn, precision=0, src=0).share
    return share, (drawn if _rank() == 0 else None)


def _grown(masks: CacheRowMasks | None, share: torch.Tensor, plain: torch.Tensor | None, key: int,
           dim: int) -> CacheRowMasks:
    """The masks with the new rows' appended (delta still the old rows': the new ones are not opened yet)."""
    if masks is None:
        return CacheRowMasks(torch.empty(0), share, plain, key, dim)
    joined_plain = None if plain is None else torch.cat([masks.mask_plain, plain], dim)
    return CacheRowMasks(masks.delta, torch.cat([masks.mask_share, share], dim), joined_plain, key, dim)


def _triple(masks: CacheRowMasks, size: torch.Size, factor_on_left: bool, provider: str, factor_size: torch.Size):
    """This party's shares of a fresh A of ``size`` and of C = A·B (B·A with the factor on the left)."""
    from crypten.common.rng import generate_random_ring_element
    from crypten.mpc.primitives import ArithmeticSharedTensor

    left, right = (factor_size, size) if factor_on_left else (size, factor_size)
    out_size = torch.matmul(torch.empty(left, device="meta"), torch.empty(right, device="meta")).shape
    if provider == "ttp":
        from crypten.mpc.provider.ttp_provider import TTPClient

        generator = TTPClient.get().get_generator()
        a = generate_random_ring_element(size, generator=generator)
        if _rank() == 0:
            c = TTPClient.get().ttp_request("aero_cache_triple", None, masks.key, size, factor_on_left)
        else:
            c = generate_random_ring_element(out_size, generator=generator)
        return a, c
    a = generate_random_ring_element(size)
    if masks.mask_plain is not None:
        c = torch.matmul(masks.mask_plain, a) if factor_on_left else torch.matmul(a, masks.mask_plain)
    else:
        c = torch.zeros(out_size, dtype=torch.long)
    return ArithmeticSharedTensor(a, precision=0, src=0).share, ArithmeticSharedTensor(c, precision=0, src=0).share


CACHE_DEALER_REQUESTS = ("aero_cache_rows", "aero_cache_triple")


def install_cache_dealer_functions() -> None:
    """Teach CrypTen's TTPServer the two requests of a cache masked row by row (call in the dealer process)."""
    from crypten.mpc.provider.ttp_provider import TTPServer

    def aero_cache_rows(self, key, size, dim):
        # the new rows' B: the sum of the shares the parties draw from the seeds they share with the dealer
        rows = self._get_additive_PRSS(size)
        masks = self.__dict__.setdefault("aero_cache_masks", {})
        masks[key] = rows if key not in masks else torch.cat([masks[key], rows], dim)
        return torch.zeros(1, dtype=torch.long)  # the parties drew their shares themselves: nothing to send

    def aero_cache_triple(self, key, size, factor_on_left):
        mask = self.aero_cache_masks[key]
        a = self._get_additive_PRSS(size)
        c = torch.matmul(mask, a) if factor_on_left else torch.matmul(a, mask)
        return c - self._get_additive_PRSS(c.size(), remove_rank=True)

    TTPServer.aero_cache_rows = aero_cache_rows
    TTPServer.aero_cache_triple = aero_cache_triple
