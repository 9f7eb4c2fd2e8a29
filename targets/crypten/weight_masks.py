"""Weights masked once per model: each query opens only the activation side of a product with a weight.

A Beaver product of a secret activation x with a secret-shared weight W uses a triple (A, B, C = A·B)
and opens both x - A and W - B. The weights are the same for every query, so here each weight gets
its own mask B once, at setup, and W - B (``delta``) is opened once per model (offline). Each query
then takes a fresh A and C = A·B for that fixed B, opens x - A (online) and computes, locally,

    x·W = C + (x - A)·B + A·(W - B) + (x - A)·(W - B)

Why reusing B reveals nothing: every value ever opened is masked by a uniform ring element used for
nothing else. W - B is opened once (opening it again would show the same value: W does not change);
each x - A uses a fresh A. C is a fresh sharing of A·B, so the shares a party holds are uniform.

Where B lives: with ``tfp`` rank 0 (the trusted first party, which already sees every triple) draws
B and keeps it in the clear; with ``ttp`` the dealer derives B from the seeds it shares with each
party (each party draws its own share, nothing is sent) and must store B, one ring element (8 bytes)
per weight element, for as long as the model is served, to deal C = A·B for every later query.

``mask_weight`` runs at setup (collectively, every party in the same order), ``masked_matmul`` per
query; ``install_dealer_functions`` teaches CrypTen's TTPServer the two requests it answers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch

from aero_compile.secrecy import WEIGHT_MASK_MODES

DEFAULT_WEIGHT_MASKS = WEIGHT_MASK_MODES[0]

_keys = itertools.count()  # the dealer's name for each mask; every party masks in graph order


@dataclass(frozen=True)
class MaskedWeight:
    """One party's view of a weight masked once: [W], the opened W - B, its share of B (and B on TFP's rank 0)."""

    shared: object  # the CrypTensor [W]: products with public values use it as before
    delta: torch.Tensor  # W - B in the ring (fixed-point encoded), public to both parties
    mask_share: torch.Tensor  # this party's share of B
    mask_plain: torch.Tensor | None  # B itself: TFP's rank 0 only (it deals the triples)
    key: int
    provider: str
    transposed: bool = False

    def t(self) -> MaskedWeight:
        """The weight with its last two dimensions swapped (a linear layer computes x @ W^T)."""
        plain = None if self.mask_plain is None else self.mask_plain.transpose(-2, -1)
        return replace(self, delta=self.delta.transpose(-2, -1), mask_share=self.mask_share.transpose(-2, -1),
                       mask_plain=plain, transposed=not self.transposed)

    def transpose(self, dim0: int, dim1: int) -> MaskedWeight:
        rank = self.delta.dim()
        if sorted((dim0 % rank, dim1 % rank)) != [rank - 2, rank - 1]:
            raise ValueError("a masked weight swaps only its last two dimensions")
        return self.t()

    def size(self, dim: int | None = None):
        return self.delta.size() if dim is None else self.delta.size(dim)


def _rank() -> int:
    import crypten.communicator as comm

    return comm.get().get_rank()


def mask_weight(shared, provider: str) -> MaskedWeight:
    """Draw B for the CrypTensor weight ``shared`` and open W - B (one round, all parties together)."""
    from crypten.common.rng import generate_random_ring_element
    from crypten.mpc.primitives import ArithmeticSharedTensor
    from crypten.mpc.primitives.beaver import IgnoreEncodings

    weight = shared._tensor
    size, key = weight.size(), next(_keys)
    plain = None
    if provider == "ttp":
        from crypten.mpc.provider.ttp_provider import TTPClient

        if _rank() == 0:
            TTPClient.get().ttp_request("aero_weight_mask", None, key, size)
        share = generate_random_ring_element(size, generator=TTPClient.get().get_generator())
        mask = ArithmeticSharedTensor.from_shares(share, precision=0)
    else:
        drawn = generate_random_ring_element(size)
        mask = ArithmeticSharedTensor(drawn, precision=0, src=0)
        plain = drawn if _rank() == 0 else None
    with IgnoreEncodings([weight, mask]):
        delta = (weight - mask).reveal()
    return MaskedWeight(shared, delta, mask.share, plain, key, provider)


def _triple(weight: MaskedWeight, size: torch.Size):
    """Fresh [A] of ``size`` and [C] = [A · B] for the weight's fixed B (shares, precision 0)."""
    from crypten.common.rng import generate_random_ring_element
    from crypten.mpc.primitives import ArithmeticSharedTensor

    out_size = torch.matmul(torch.empty(size, device="meta"), torch.empty(weight.delta.shape, device="meta")).shape
    if weight.provider == "ttp":
        from crypten.mpc.provider.ttp_provider import TTPClient

        generator = TTPClient.get().get_generator()
        a = generate_random_ring_element(size, generator=generator)
        if _rank() == 0:
            c = TTPClient.get().ttp_request("aero_masked_triple", None, weight.key, size, weight.transposed)
        else:
            c = generate_random_ring_element(out_size, generator=generator)
        return ArithmeticSharedTensor.from_shares(a, precision=0), ArithmeticSharedTensor.from_shares(c, precision=0)
    a = generate_random_ring_element(size)
    c = torch.matmul(a, weight.mask_plain) if weight.mask_plain is not None else torch.zeros(out_size, dtype=torch.long)
    return ArithmeticSharedTensor(a, precision=0, src=0), ArithmeticSharedTensor(c, precision=0, src=0)


def masked_matmul(x, weight: MaskedWeight):
    """x @ W for a secret CrypTensor x and a weight masked once: one round, opening x - A only."""
    from crypten.mpc.primitives.beaver import IgnoreEncodings

    share = x._tensor
    a, c = _triple(weight, share.size())
    with IgnoreEncodings([a, share]):
        epsilon = (share - a).reveal()
    product = c.share + torch.matmul(epsilon, weight.mask_share) + torch.matmul(a.share, weight.delta)
    if _rank() == 0:
        product = product + torch.matmul(epsilon, weight.delta)
    result = share.clone()
    result.share = product
    result = result.div_(share.encoder.scale)  # both factors fixed-point: one truncation, as CrypTen's matmul
    out = x.shallow_copy()
    out._tensor = result
    return out


DEALER_REQUESTS = ("aero_weight_mask", "aero_masked_triple")


def install_dealer_functions() -> None:
    """Teach CrypTen's TTPServer the two requests of weights masked once (call in the dealer process)."""
    from crypten.mpc.provider.ttp_provider import TTPServer

    def aero_weight_mask(self, key, size):
        # B = the sum of the shares the parties draw from the seeds they share with the dealer; kept.
        self.__dict__.setdefault("aero_masks", {})[key] = self._get_additive_PRSS(size)
        return torch.zeros(1, dtype=torch.long)  # the parties drew their shares themselves: nothing to send

    def aero_masked_triple(self, key, size, transposed):
        mask = self.aero_masks[key]
        a = self._get_additive_PRSS(size)
        c = torch.matmul(a, mask.transpose(-2, -1) if transposed else mask)
        return c - self._get_additive_PRSS(c.size(), remove_rank=True)

    TTPServer.aero_weight_mask = aero_weight_mask
    TTPServer.aero_masked_triple = aero_masked_triple
