"""Private generation under CrypTen: prefill + decode steps in one session, the cache kept secret."""

import pytest
import torch

import aero_compile as ac
from aero_compile.generation import derive_programs
from aero_compile.generation.decoding import greedy_generate

pytestmark = [pytest.mark.crypten, pytest.mark.slow]


def test_private_greedy_generation_matches_plaintext(captured):
    from aero_compile.targets.crypten.generation import generate_privately

    gm = ac.PassManager.from_pipeline("all").run(captured("gpt2-tiny")).graph_module
    prompt = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(3))
    result = generate_privately(gm, prompt, 3)
    tokens, step_logits = greedy_generate(derive_programs(gm), prompt, 3)
    assert result["tokens"] == tokens
    plain = torch.stack([logits[0] for logits in step_logits])
    error = (result["logits"] - plain).abs().amax(-1)
    assert (error < 1e-3).all(), error  # every step, the cache's included (a stale position row gave 1e-2)
    steps = result["decode"]
    assert [step["context"] for step in steps] == [5, 6, 7]
    # weights are shared and masked in the first step only: later steps' setup is the new token alone
    assert all(step["setup"]["bytes"] * 5 < steps[0]["setup"]["bytes"] for step in steps[1:]), steps
