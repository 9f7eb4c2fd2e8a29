"""The measured spu-cheetah profile against a cheetah run it never saw: gpt2-tiny before and after `all` at
T=16 (calibration measures one-node forms only, never a model, never this length)."""

from __future__ import annotations

import pytest

from aero_compile.cost import analyze, load_profile
from aero_compile.targets.spu.runner import run_private

pytestmark = [pytest.mark.spu, pytest.mark.slow]  # a whole-model cheetah run

SEQ_LEN = 16


@pytest.fixture(scope="module")
def cheetah_runs(captured, rewritten_all):
    """gpt2-tiny before (LayerNorm, GELU: Beaver-cached and direct-HE products, OT refills) and after `all`
    (softmax, unpacked single-block attention products) under cheetah; benchmarks/spu_private.py measures
    T=32, 64 and 128 and the 128-wide GPT at 1-4 layers."""
    graphs = {"before": captured("gpt2-tiny"), "after": rewritten_all("gpt2-tiny")}
    # one run: bytes are the first run's however many are timed (runner.timed_profiles), and bytes are the claim
    return graphs, run_private(graphs, seq_len=SEQ_LEN, protocol="cheetah", repetitions=1)


def test_the_profile_records_how_it_was_measured():
    source = load_profile("spu-cheetah").data["source"]
    assert source["kind"] == "measured" and source["command"].startswith("aero-compile calibrate spu")
    assert source["spu"] == "0.9.5" and source["jax"] and source["torch"]
    assert load_profile("spu-cheetah").data["measurements"]  # raw figures, not only the fit


@pytest.mark.parametrize("stage", ["before", "after"])
def test_predicted_bytes_match_cheetah(cheetah_runs, stage):
    """The issue's 5% on a model and length the calibration never saw (measured -0.4% / +0.7%)."""
    graphs, measured = cheetah_runs
    predicted = analyze(graphs[stage], profile="spu-cheetah", seq_len=SEQ_LEN, batch=1)
    m = measured[stage]
    assert not predicted.unsupported, predicted.unsupported
    assert m["protocol"] == "cheetah" and m["argmax_agreement_resolvable"] >= 0.99, m
    assert abs(predicted.bytes - m["bytes"]) <= 0.05 * m["bytes"], (predicted.bytes, m["bytes"], m["by_op"])


# Here, not in test_cheetah_pricing.py: `calibrate spu` imports jax, and files that sort before the CrypTen
# tests must not (CrypTen's own run_multiprocess forks).
def test_calibrate_update_refuses_a_file_that_is_not_a_profile_in_one_line(tmp_path, capsys):
    from aero_compile.cli import main

    bogus, out = tmp_path / "notes.json", tmp_path / "out.json"
    bogus.write_text('{"ops": {}}')  # JSON, but no measurements to refit from
    assert main(["calibrate", "spu", "--update", str(bogus), "-o", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--update" in error[0] and "measurements" in error[0], error
    assert not out.exists()
