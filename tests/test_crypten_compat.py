"""CrypTen compatibility fixes and the public mask clamp (no parties needed)."""

import datetime

import pytest
import torch

from aero_compile.targets.crypten import compat
from aero_compile.targets.crypten.protocols import CRYPTEN_MASK_VALUE, safe_public_constant

pytestmark = pytest.mark.crypten  # CrypTen itself, one party in a fresh interpreter


def test_fixed_point_decode_is_exact_for_negative_values():
    compat.import_crypten()  # applies the fix
    from crypten.encoder import FixedPointEncoder

    encoder = FixedPointEncoder(precision_bits=16)
    raw = torch.tensor([-131071, -1, -65536, 131071, -6553605])
    expected = raw.double() / 65536  # CrypTen 0.4.1 decoded -131071 as -3.0
    assert torch.allclose(encoder.decode(raw).double(), expected, atol=1e-6)


def test_party_timeout_reaches_process_group_setup():
    calls = {}

    class FakeDist:
        def init_process_group(self, *args, **kwargs):
            calls["init"] = kwargs

        def new_group(self, *args, **kwargs):
            calls["group"] = kwargs

        def is_initialized(self):
            return False

    wrapped = compat._WatchedDistributed(FakeDist(), 7.0)
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
    assert torch.equal(safe_public_constant(torch.tensor([-20000])), torch.tensor([-20000]))  # integers: not masks


# Causal masking as each family writes it, lowered by the real dispatch table on a CrypTensor, then
# CrypTen's softmax, revealed. One party in a fresh interpreter: crypten.init() must not touch the test
# process, whose forked CrypTen parties initialise their own.
_MASKED_SOFTMAX = """
import json, torch
from aero_compile.targets.crypten.compat import import_crypten
from aero_compile.targets.crypten.dispatch import NODE_LOWERINGS
crypten = import_crypten()
crypten.init()
torch.manual_seed(0)
scores = torch.randn(2, 4, 6, 6) * 3
hidden = ~torch.tril(torch.ones(6, 6, dtype=torch.bool))
lowest = torch.finfo(torch.float32).min
additive = torch.zeros(6, 6).masked_fill(hidden, lowest)
expected = torch.softmax(scores.masked_fill(hidden, lowest), -1)
forms = {
    **{f"masked_fill {v}": lambda x, v=v: NODE_LOWERINGS["masked_fill"](x, hidden, v) for v in (float("-inf"), lowest, -1e4)},
    "where (HF GPT-2)": lambda x: NODE_LOWERINGS["where"](~hidden, x, torch.tensor(lowest)),
    "add (Llama, NeoX)": lambda x: NODE_LOWERINGS["add"](x, additive),
    "add, mask first": lambda x: NODE_LOWERINGS["add"](additive, x),
    "unclamped (CrypTen alone)": lambda x: x + additive,
}
errors = {name: (form(crypten.cryptensor(scores)).softmax(-1).get_plain_text() - expected).abs().max().item()
          for name, form in forms.items()}
print(json.dumps(errors))
"""


def test_dispatch_clamps_every_mask_form_so_private_softmax_matches():
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _MASKED_SOFTMAX], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    # The premise: CrypTen's exp, (1 + x/256)^256, is astronomically wrong at an unclamped mask.
    assert errors.pop("unclamped (CrypTen alone)") > 1.0
    assert len(errors) == 6 and all(error < 0.01 for error in errors.values()), errors
