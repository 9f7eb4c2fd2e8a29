"""What stays nonlinear after `all`: named by kind and module in the report, and priced in the terminal."""

import json
import re

import pytest

import aero_compile as ac
from aero_compile.models.hf import hf_causal_lm

GEMMA2 = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
              intermediate_size=64, vocab_size=64, max_position_embeddings=64, sliding_window=8,
              bos_token_id=0, eos_token_id=0, pad_token_id=0)


def test_gemma2_soft_capping_is_listed_by_name_after_all():
    gm = ac.capture(hf_causal_lm("gemma2", GEMMA2), name="gemma2-tiny")
    report = ac.PassManager.from_pipeline("all", seq_len=16).run(gm).report
    remaining = {(entry.kind, entry.module): entry for entry in report.after.remaining_nonlinear}
    assert set(remaining) == {("tanh", "Gemma2Attention"), ("softmax", "Gemma2Attention"),
                              ("tanh", "Gemma2ForCausalLM")}  # attention and final-logit soft-capping
    assert remaining[("tanh", "Gemma2Attention")].count == 2 and remaining[("tanh", "Gemma2Attention")].elements
    entry = report.to_json()["after"]["remaining_nonlinear"][0]
    assert set(entry) >= {"kind", "module", "count", "elements", "operators", "ops"}


def test_a_softmax_only_family_lists_only_its_attention_softmaxes(captured):
    report = ac.PassManager.from_pipeline("all", seq_len=16).run(captured("llama-tiny")).report
    assert [entry.label for entry in report.after.remaining_nonlinear] == ["softmax x2 in LlamaAttention"]
    before_rotary = report.before.op_counts.get("trig", 0)
    assert before_rotary  # rotary sin/cos are in the graph, but public: not listed


@pytest.mark.slow  # a whole CLI run (several seconds): kept out of the fast core
def test_the_cli_names_and_prices_what_stays_nonlinear(tmp_path, capsys):
    """docs/passes.md's `all` row: what is left on secret data is named, with its cost, in the terminal and
    in the JSON report's after.remaining_nonlinear."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from aero_compile.cli import main

    with torch.random.fork_rng():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(AutoConfig.for_model("gemma2", **GEMMA2)).save_pretrained(tmp_path / "gemma2")
    capsys.readouterr()
    report_path = tmp_path / "r.json"
    assert main([str(tmp_path / "gemma2"), "--passes", "all", "--seq-len", "16", "--protocol", "crypten",
                 "--report-json", str(report_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the terminal table wraps long lines
    named = re.search(r"nonlinear on secret data after the passes: (.*?) canonicalize:", out).group(1)
    assert "tanh x2 in Gemma2Attention" in named and "in Gemma2ForCausalLM" in named
    priced = out.split("cost of what remains: ")[1]
    assert re.search(r"tanh x2 in Gemma2Attention: \d+ rounds, [\d.]+ MB", priced)
    remaining = json.loads(report_path.read_text())["after"]["remaining_nonlinear"]
    assert {(entry["kind"], entry["module"]) for entry in remaining} == {
        ("tanh", "Gemma2Attention"), ("softmax", "Gemma2Attention"), ("tanh", "Gemma2ForCausalLM")}
