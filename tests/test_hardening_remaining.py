"""What stays nonlinear after `all` is named in the report, and the README says so (issue 12, defect 5)."""

import re
from pathlib import Path

import aero_compile as ac
from aero_compile.models.hf import hf_causal_lm

ROOT = Path(__file__).resolve().parent.parent
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


def test_readme_claims_what_the_tool_does():
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `all` |"))
    assert "whatever the family" not in row
    assert "remaining_nonlinear" in row and "tanh" in row
    table = (ROOT / "benchmarks" / "README.md").read_text()
    gemma2 = next(line for line in table.splitlines() if line.startswith("| gemma2 |"))
    assert re.search(r"tanh x\d+ in Gemma2Attention", gemma2)
    mixtral = next(line for line in table.splitlines() if line.startswith("| mixtral |"))
    assert "max (topk)" in mixtral and "MixtralTopKRouter" in mixtral
