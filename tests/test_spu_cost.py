"""The measured spu-cheetah profile against a cheetah run it never saw: gpt2-tiny after `all` at T=16
(calibration measures one-node forms only, never a model, never this length)."""

from __future__ import annotations

import pytest

from aero_compile.cost import analyze, load_profile
from aero_compile.targets.spu.runner import run_private

SEQ_LEN = 16


@pytest.fixture(scope="module")
def cheetah_run(rewritten_all):
    """gpt2-tiny after `all` under cheetah. The graph before the passes (LayerNorm, GELU) is not run here: its
    prediction is held only to 10% at this length (cheetah switches an elementwise product from OT to HE,
    which the linear per-op fit cannot follow), and its cheetah run was a third of this file's CPU time;
    benchmarks/spu_private.py
    measures both sides at T=32, 64 and 128 against the prediction."""
    after = rewritten_all("gpt2-tiny")
    return after, run_private({"after": after}, seq_len=SEQ_LEN, protocol="cheetah")["after"]


def test_the_profile_records_how_it_was_measured():
    source = load_profile("spu-cheetah").data["source"]
    assert source["kind"] == "measured" and source["command"].startswith("aero-compile calibrate spu")
    assert source["spu"] == "0.9.5" and source["jax"] and source["torch"]
    assert load_profile("spu-cheetah").data["measurements"]  # raw figures, not only the fit


def test_predicted_bytes_match_cheetah_after_the_passes(cheetah_run):
    """The issue's 5% on a model and length the calibration never saw (measured -1.7%)."""
    after, m = cheetah_run
    predicted = analyze(after, profile="spu-cheetah", seq_len=SEQ_LEN, batch=1)
    assert not predicted.unsupported, predicted.unsupported
    assert m["protocol"] == "cheetah" and m["argmax_agreement_resolvable"] >= 0.99, m
    assert abs(predicted.bytes - m["bytes"]) <= 0.05 * m["bytes"], (predicted.bytes, m["bytes"], m["by_op"])
