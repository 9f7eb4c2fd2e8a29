"""Private generation under SPU: prefill + decode steps in one session, the K/V cache kept in the parties."""

import json

import pytest
import torch


pytestmark = pytest.mark.spu

PROMPT = "3,1,4,1,5,9,2,6"  # 8 tokens
NEW_TOKENS = 4
ONE_LAYER = "gpt2-tiny{n_layer=1}"  # for the costlier runs: what they check is per layer alike


@pytest.mark.slow
def test_cli_spu_generation_matches_plaintext_and_the_analyzer(tmp_path, capsys):
    """Before and after `all`: private tokens are the plaintext greedy tokens (except at a listed near tie)
    and the bytes of the whole generation are the analyzer's under spu-cheetah, within 2%."""
    from aero_compile.cli import main

    report = tmp_path / "r.json"
    assert main([ONE_LAYER, "--passes", "all", "--run-private", "--engine", "spu", "--protocol", "spu-cheetah",
                 "--generate", str(NEW_TOKENS), "--prompt-ids", PROMPT, "--seq-len", "8",
                 "--private-repetitions", "1", "--report-json", str(report)]) == 0
    data = json.loads(report.read_text())
    for side in ("before", "after"):
        section = data["measured"][side]["generation"]
        assert section["engine"] == "spu" and section["provider"] == "cheetah"
        assert len(section["tokens"]) == NEW_TOKENS
        differ = [i for i, (a, b) in enumerate(zip(section["tokens"], section["plaintext_tokens"])) if a != b]
        assert set(differ) <= set(section["near_ties"]), section
        assert [step["context"] for step in section["decode"]] == [8, 9, 10, 11]
        measured = sum(step["bytes"] for step in section["decode"])
        predicted = data[side]["generation"]["total"]["bytes"]
        assert section["predicted_bytes"] == {"profile": "spu-cheetah", "bytes": predicted}
        assert abs(measured - predicted) <= 0.02 * predicted, (side, measured, predicted, section["decode"])
    out = capsys.readouterr().out
    assert "SPU cheetah: products by HE" in out and "could open" not in out


@pytest.mark.slow
def test_semi2k_generation_says_the_owner_could_unmask(captured):
    from aero_compile.generation import derive_programs
    from aero_compile.generation.decoding import greedy_generate
    from aero_compile.targets.spu.generation import generate_privately

    gm = captured("gpt2-tiny")
    prompt = torch.tensor([[int(i) for i in PROMPT.split(",")][:5]])
    run = generate_privately(gm, prompt, 2, protocol="semi2k")
    tokens, step_logits = greedy_generate(derive_programs(gm), prompt, 2)
    error = (run["logits"] - torch.stack([logits[0] for logits in step_logits])).abs().amax(-1)
    assert (error < 1e-2).all(), error  # every step, the one reading the cache included
    assert run["tokens"] == tokens
    assert "trusted first party" in run["note"] and "could open" in run["note"]
    assert [step["context"] for step in run["decode"]] == [5, 6]
    # the weights are shared in the first step only: a decode step shares its position row alone
    prefill, decode = run["owner_shared"]
    assert decode["session"] == 0 and 0 < decode["step"] * 100 < prefill["session"], run["owner_shared"]


@pytest.mark.slow
def test_nothing_the_owner_receives_depends_on_the_prompt_under_cheetah(rewritten_all):
    """Two prompts of one length: every message the owner's process receives outside the runtime (its
    link's receives, recorded as header, array sizes and share meta) is the same; the owner reconstructs
    nothing (its result holds no token or logit)."""
    from aero_compile.targets.spu.generation import generate_privately

    gm = rewritten_all(ONE_LAYER)
    views = []
    for prompt in ([[3, 1, 4, 1, 5]], [[200, 17, 99, 250, 0]]):
        run = generate_privately(gm, torch.tensor(prompt), 3, protocol="cheetah")
        assert {entry["from"] for entry in run["owner_view"]} == {1}  # the client: its one-hot shares only
        views.append(run["owner_view"])
    assert len(views[0]) == 3 and views[0] == views[1], views  # one message a step


def test_generate_past_the_context_is_refused_before_any_party_starts(captured, capsys):
    from aero_compile.cli import main
    from aero_compile.graph_info import graph_info

    context = graph_info(captured("gpt2-tiny")).max_seq_len
    assert main(["gpt2-tiny", "--run-private", "--engine", "spu", "--generate", str(context), "--prompt-ids",
                 PROMPT, "--seq-len", "8"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--generate" in error[0] and "context" in error[0], error



@pytest.mark.slow
def test_the_spu_client_samples_as_plaintext_sampling_would(captured):
    """--temperature under SPU: the client's draws, seeded, are those plaintext sampling makes from the same
    logits (the private logits differ from plaintext by ~1e-4, far below what moves a draw here)."""
    from aero_compile.generation import derive_programs
    from aero_compile.generation.decoding import generate
    from aero_compile.generation.sampling import Sampling
    from aero_compile.targets.spu.generation import generate_privately

    gm = captured("gpt2-tiny")
    prompt = torch.tensor([[int(i) for i in PROMPT.split(",")][:5]])
    sampling = Sampling(temperature=2.0, seed=3)  # a flat distribution: draws far from the argmax
    run = generate_privately(gm, prompt, 3, protocol="semi2k", sampling=sampling)
    tokens, _ = generate(derive_programs(gm), prompt, 3, sampling.picker())
    greedy, _ = generate(derive_programs(gm), prompt, 3, Sampling().picker())
    assert run["tokens"] == tokens
    assert tokens != greedy  # the draws are not the argmax: the sampling path was taken
