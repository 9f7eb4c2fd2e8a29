"""CrypTen compatibility fixes and the public mask clamp (no parties needed)."""

import datetime

import torch

from aero_compile.targets.crypten import compat
from aero_compile.targets.crypten.protocols import CRYPTEN_MASK_VALUE, safe_public_constant


def test_fixed_point_decode_is_exact_for_negative_values():
    crypten = compat.import_crypten()
    from crypten.encoder import FixedPointEncoder

    encoder = FixedPointEncoder(precision_bits=16)
    raw = torch.tensor([-131071, -1, -65536, 131071, -6553605])
    expected = raw.double() / 65536  # CrypTen 0.4.1 decoded -131071 as -3.0
    assert torch.allclose(encoder.decode(raw).double(), expected, atol=1e-6)
    assert crypten is not None


def test_party_timeout_reaches_process_group_setup():
    calls = {}

    class FakeDist:
        def init_process_group(self, *args, **kwargs):
            calls["init"] = kwargs

        def new_group(self, *args, **kwargs):
            calls["group"] = kwargs

        def is_initialized(self):
            return False

    wrapped = compat._DistributedWithTimeout(FakeDist(), 7.0)
    wrapped.init_process_group(backend="gloo")
    wrapped.new_group([0, 1])
    assert calls["init"]["timeout"] == datetime.timedelta(seconds=7)
    assert calls["group"]["timeout"] == datetime.timedelta(seconds=7)
    assert wrapped.is_initialized() is False  # everything else passes through


def test_masks_are_clamped_to_a_value_cryptens_exp_survives():
    hf_mask = torch.tensor([0.0, torch.finfo(torch.float32).min, float("-inf"), -1e4, -5.0])
    clamped = safe_public_constant(hf_mask)
    assert clamped.tolist() == [0.0, CRYPTEN_MASK_VALUE, CRYPTEN_MASK_VALUE, CRYPTEN_MASK_VALUE, -5.0]
    assert safe_public_constant(-1e4) == CRYPTEN_MASK_VALUE
    assert safe_public_constant(0.25) == 0.25
    # exp as CrypTen computes it, (1 + x/256)^256, is ~0 at the clamped mask and explodes at -1e4.
    assert (1 + (CRYPTEN_MASK_VALUE - 10) / 256) ** 256 < 1e-20
    assert (1 + (-1e4) / 256) ** 16 > 1e20  # and squared 4 more times: astronomically wrong
