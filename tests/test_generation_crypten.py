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


def test_each_private_step_costs_what_the_analyzer_predicts(captured):
    """After all,softmax-to-quad{norm=length}: prefill and every decode step, rounds and bytes as predicted."""
    from aero_compile.cost.analyzer import analyze
    from aero_compile.generation.pricing import SymbolicShapes, _decode_inputs
    from aero_compile.targets.crypten.generation import generate_privately

    gm = ac.PassManager.from_pipeline("all,softmax-to-quad{norm=length}").run(captured("gpt2-tiny")).graph_module
    programs = derive_programs(gm)
    prompt = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(3))
    result = generate_privately(gm, prompt, 3)
    assert result["tokens"] == greedy_generate(programs, prompt, 3)[0]
    shapes = SymbolicShapes(programs.decode, _decode_inputs(programs, 1))
    predicted = [analyze(programs.prefill, seq_len=5)] + [
        analyze(programs.decode, seq_len=context, metas=shapes.at(context - 1)) for context in (6, 7)]
    measured = [(step["rounds"], step["bytes"]) for step in result["decode"]]
    assert measured == [(p.rounds, p.bytes) for p in predicted]


def test_cli_run_private_generate_fills_measured_generation(tmp_path, capsys):
    import json

    from aero_compile.cli import main

    report = tmp_path / "r.json"
    assert main(["gpt2-tiny", "--passes", "all,softmax-to-quad{norm=length}", "--generate", "3", "--prompt-ids",
                 "3,1,4,1,5", "--run-private", "--crypten-provider", "ttp", "--report-json", str(report)]) == 0
    data = json.loads(report.read_text())
    for side in ("before", "after"):
        section = data["measured"][side]["generation"]
        assert section["tokens"] == section["plaintext_tokens"] or section["near_ties"]
        assert [step["context"] for step in section["decode"]] == [5, 6, 7]
    predicted = data["after"]["generation"]["decode"]
    measured = data["measured"]["after"]["generation"]["decode"][1:]
    assert [(s["rounds"], s["bytes"]) for s in measured] == [(s["rounds"], s["bytes"]) for s in predicted]
    assert "provider ttp" in capsys.readouterr().out
