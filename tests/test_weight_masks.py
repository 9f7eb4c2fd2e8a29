"""Weights masked once per model, as the cost analyzer and the report see them (no parties run here)."""

import json

import pytest

from aero_compile.cost import analyze
from aero_compile.errors import AeroError
from aero_compile.records import to_json


@pytest.mark.slow
def test_report_keeps_per_query_cost_on_top_and_the_offline_setup_beside_it(tmp_path, capsys, captured):
    from aero_compile.cli import main

    assert main(["gpt2-tiny", "--passes", "all", "--seq-len", "8", "--report-json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    out = capsys.readouterr().out
    assert "offline, once per model" in out and "(per query)" in out
    cost = report["before"]["cost"]
    old = to_json(analyze(captured("gpt2-tiny"), seq_len=8, weight_masks="per-query").summary())
    assert cost["weight_masks"] == "per-model" and set(cost["offline"]) >= {"rounds", "bytes", "latency_s"}
    assert cost["offline"]["rounds"] == cost["offline"]["count"] > 0  # one opening of W - B per weight
    assert cost["rounds"] == old["rounds"] and cost["bytes"] < old["bytes"]  # the top-level figures: per query
    assert old["weight_masks"] == "per-query" and old["offline"]["bytes"] == 0
    assert report["after"]["cost"]["offline"]["bytes"] > 0
    assert report["savings"]["basis"].startswith("per query")
    assert report["savings"]["bytes"] == pytest.approx(cost["bytes"] / report["after"]["cost"]["bytes"], rel=1e-3)


def test_a_product_with_a_weight_opens_only_its_activation_per_query(captured):
    gm = captured("gpt2-tiny")
    masked, old = analyze(gm, seq_len=8), analyze(gm, seq_len=8, weight_masks="per-query")
    for kind in ("linear", "embedding"):
        assert masked.by_op[kind].rounds == old.by_op[kind].rounds
        assert masked.by_op[kind].bytes < old.by_op[kind].bytes
    assert masked.by_op["matmul"].bytes == old.by_op["matmul"].bytes  # activation x activation: nothing fixed
    # every matrix a product reads (wpe is added, not multiplied); lm_head reads wte (tied): masked once
    weights = [name for name, p in gm.named_parameters() if p.dim() >= 2 and name != "wpe.weight"]
    assert masked.offline.count == masked.offline.rounds == len(weights)
    assert masked.offline.bytes == 16 * sum(p.numel() for name, p in gm.named_parameters() if name in weights)


def test_bumblebee_has_no_offline_setup_and_bad_mode_is_one_line(captured):
    report = analyze(captured("gpt2-tiny"), "bumblebee", seq_len=8)
    assert report.weight_masks == "per-query" and report.offline.bytes == 0
    with pytest.raises(AeroError, match="unknown weight-mask mode 'sometimes'"):
        analyze(captured("gpt2-tiny"), seq_len=8, weight_masks="sometimes")
