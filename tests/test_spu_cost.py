"""The measured spu-cheetah profile against a cheetah run it never saw: gpt2-tiny before and after `all` at T=16
(calibration measures one-node forms only, never a model, never this length)."""

from __future__ import annotations

import pytest

from aero_compile.cost import analyze, load_profile
from aero_compile.pass_manager import PassManager
from aero_compile.targets.spu.runner import run_private

SEQ_LEN = 16


@pytest.fixture(scope="module")
def cheetah_runs(captured):
    before = captured("gpt2-tiny")
    graphs = {"before": before, "after": PassManager.from_pipeline("all").run(before).graph_module}
    return graphs, run_private(graphs, seq_len=SEQ_LEN, protocol="cheetah")


def test_the_profile_records_how_it_was_measured():
    source = load_profile("spu-cheetah").data["source"]
    assert source["kind"] == "measured" and source["command"].startswith("aero-compile calibrate spu")
    assert source["spu"] == "0.9.5" and source["jax"] and source["torch"]
    assert load_profile("spu-cheetah").data["measurements"]  # raw figures, not only the fit


# After `all` (softmax, products): within 5% (measured -1.7%). Before (LayerNorm, GELU): cheetah switches an
# elementwise product from OT (<= ~2K elements, ~35 B each) to HE (4096-slot ciphertexts, ~1.3 MB each), which
# the linear per-op fit cannot follow: measured -8.7%, so this side is held to 10%, not the 5%.
TOLERANCE = {"before": 0.10, "after": 0.05}


@pytest.mark.parametrize("stage", ["before", "after"])
def test_predicted_bytes_match_cheetah(cheetah_runs, stage):
    graphs, measured = cheetah_runs
    predicted = analyze(graphs[stage], profile="spu-cheetah", seq_len=SEQ_LEN, batch=1)
    assert not predicted.unsupported, predicted.unsupported
    m = measured[stage]
    assert m["protocol"] == "cheetah" and m["argmax_agreement_resolvable"] >= 0.99, m
    assert abs(predicted.bytes - m["bytes"]) <= TOLERANCE[stage] * m["bytes"], (predicted.bytes, m["bytes"], m["by_op"])
