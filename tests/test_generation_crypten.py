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


@pytest.mark.parametrize("provider", ["tfp", "ttp"])
@pytest.mark.parametrize("weight_masks", ["per-model", "per-query"])
def test_each_private_step_costs_what_the_analyzer_predicts(captured, provider, weight_masks):
    """After all,softmax-to-quad{norm=length}: prefill and every decode step, rounds as predicted and bytes within
    1% (exactly, with weights masked once), under both providers. With weights masked once the K/V cache is
    too, row by row (targets/crypten/cache_masks.py): a decode step's attention products open the query, the
    attention weights and the new K and V rows, never the cached rows again; per query, the whole cache."""
    from aero_compile.cost.analyzer import analyze
    from aero_compile.generation.pricing import SymbolicShapes, _decode_inputs
    from aero_compile.targets.crypten.generation import generate_privately

    gm = ac.PassManager.from_pipeline("all,softmax-to-quad{norm=length}").run(captured("gpt2-tiny")).graph_module
    programs = derive_programs(gm)
    prompt = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(3))
    result = generate_privately(gm, prompt, 3, provider=provider, weight_masks=weight_masks)
    assert result["tokens"] == greedy_generate(programs, prompt, 3)[0]
    shapes = SymbolicShapes(programs.decode, _decode_inputs(programs, 1))
    predicted = [analyze(programs.prefill, seq_len=5, weight_masks=weight_masks)] + [
        analyze(programs.decode, seq_len=context, metas=shapes.at(context - 1), weight_masks=weight_masks)
        for context in (6, 7)]
    steps = result["decode"]
    assert [step["rounds"] for step in steps] == [p.rounds for p in predicted]
    for step, p in zip(steps, predicted):
        assert abs(step["bytes"] - p.bytes) <= (0 if weight_masks == "per-model" else 0.01) * p.bytes, (step, p)
    # gpt2-tiny: 2 layers, 4 heads of 16, d=64. Per layer and step, q.K^T opens q (64) and the new K row (64),
    # p.V opens p (4 heads x context) and the new V row (64): 16 bytes per opened element (both shares)
    cache_rows = 64 + 64 if weight_masks == "per-model" else None
    for step in steps[1:]:
        context, products = step["context"], step["by_op"]["matmul"]["bytes"]
        opened = 64 + 4 * context + (cache_rows if cache_rows else 2 * 64 * context)
        assert products == 16 * 2 * opened, (context, products)


def test_cli_run_private_generate_fills_measured_generation(tmp_path, capsys):
    import json

    from aero_compile.cli import main

    report = tmp_path / "r.json"
    assert main(["gpt2-tiny", "--passes", "all,softmax-to-quad{norm=length}", "--generate", "3", "--prompt-ids",
                 "3,1,4,1,5", "--run-private", "--crypten-provider", "ttp", "--report-json", str(report),
                 # the run's separate forward pass (nothing below reads it) at a short T, once
                 "--private-seq-len", "4", "--private-repetitions", "1"]) == 0
    data = json.loads(report.read_text())
    for side in ("before", "after"):
        section = data["measured"][side]["generation"]
        assert section["tokens"] == section["plaintext_tokens"] or section["near_ties"]
        assert [step["context"] for step in section["decode"]] == [5, 6, 7]
    predicted = data["after"]["generation"]["decode"]
    measured = data["measured"]["after"]["generation"]["decode"][1:]
    assert [(s["rounds"], s["bytes"]) for s in measured] == [(s["rounds"], s["bytes"]) for s in predicted]
    assert "provider ttp" in capsys.readouterr().out
