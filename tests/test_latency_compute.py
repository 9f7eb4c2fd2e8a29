"""The compute term of SPU cheetah's latency: forms timed between two processes, the fixed cost of an execution,
matrix products priced by MACs and ciphertexts; and (slow) a held-out cheetah run against its prediction."""

from __future__ import annotations

import math
import statistics

import pytest

from aero_compile.cost import analyze, load_profile
from aero_compile.cost.latency import LatencyModel
from aero_compile.cost.profiles import Profile

pytestmark = pytest.mark.spu


def _with_latency(name, **section):
    profile = load_profile(name)
    return Profile(profile.name, {**profile.data, "latency": {**profile.data.get("latency", {}), **section}}, profile.path)


@pytest.fixture(scope="module")
def tiny(captured, rewritten_all):
    return captured("gpt2-tiny"), rewritten_all("gpt2-tiny")


def test_fixed_cost_per_execution_is_paid_once_per_program(tiny):
    before, after = tiny
    for graph in (before, after):
        plain = analyze(graph, _with_latency("spu-cheetah", fixed_s_per_execution=0.0), "loopback", seq_len=16)
        fixed = analyze(graph, _with_latency("spu-cheetah", fixed_s_per_execution=0.75), "loopback", seq_len=16)
        assert math.isclose(fixed.compute_s - plain.compute_s, 0.75, rel_tol=1e-9)
        assert math.isclose(fixed.latency_s - plain.latency_s, 0.75, rel_tol=1e-9)
        assert (fixed.rounds, fixed.bytes) == (plain.rounds, plain.bytes)
    assert LatencyModel.of(load_profile("crypten")).fixed_s_per_execution == 0.0  # a profile that states none


def test_fold_runs_averages_back_to_back_runs_less_the_fixed_cost():
    from aero_compile.targets.spu.process_timing import fold_runs

    cases = [{"form": "mul", "repeats": 3}, {"form": "matmul", "repeats": 2}]
    runs = [{"seconds": s, "rounds": 4, "bytes": 10} for s in (0.3, 0.5, 0.4, 2.1, 1.9)]
    fold_runs(cases, runs, fixed_s=0.1)
    assert cases[0]["seconds"] == pytest.approx(0.3) and cases[1]["seconds"] == pytest.approx(1.9)
    assert cases[1]["runs_seconds"] == [2.1, 1.9] and cases[0]["timed_in"] == "processes"
    with pytest.raises(ValueError):
        fold_runs(cases, runs[:4], fixed_s=0.1)


def test_matrix_product_seconds_follow_the_timed_runs_in_he_work_and_macs():
    """The matmul entry's seconds are fitted to the compute timings (not the bytes calibration's runs), as a
    line in its size: per matrix, HE result block, packing automorphism and MAC. Synthetic seconds in those
    features come back exactly."""
    from aero_compile.targets.spu.calibrate import _matrix_latency

    recorded = [r for r in load_profile("spu-cheetah").data["measurements"] if r["form"] == "matmul"]
    assert len(recorded) >= 6

    def truth(features):
        return (0.02 * features["matrix_products"] + 3e-7 * features["macs"] + 0.004 * features["he_result_blocks"]
                + 0.001 * features["he_automorphisms"])

    timed = [{**r, "seconds": truth(r["steps"][0]["features"])} for r in recorded]
    entry = _matrix_latency(recorded, timed)
    assert entry["seconds_fit"]["max_relative_residual"] < 1e-6
    profile = Profile("t", {"ops": {"matmul": {**entry, "rounds": {"calls": 1}, "bytes": {}}}})
    for r in timed:
        assert profile.cost("matmul", r["steps"][0]["features"]).seconds == pytest.approx(r["seconds"], rel=1e-6)
    assert _matrix_latency(recorded)["seconds_fit"] != entry["seconds_fit"]  # without timings: the recorded runs'


def test_the_shipped_compute_says_where_it_was_measured():
    latency = load_profile("spu-cheetah").data["latency"]
    source, fixed = latency["compute_source"], latency["fixed_source"]
    for where in (source, fixed):
        assert {"cpu", "cores", "date", "command", "load_average_1min", "load_average_1min_at_end"} <= set(where)
        assert where["kind"] == "measured" and where["command"].startswith("aero-compile calibrate spu")
    assert "processes" in source["how"] and {"matmul", "softmax"} <= set(source["forms"])
    assert latency["fixed_s_per_execution"] == pytest.approx(statistics.median(fixed["runs"]), abs=1e-6)
    # socket costs are inside compute timed over brpc: not added again per message
    assert latency["loopback_s_per_message"] == 0.0


def test_compute_options_it_cannot_use_are_refused_in_one_line(tmp_path, capsys):
    from aero_compile.cli import main
    from aero_compile.cost.profiles import DATA_DIR

    out = tmp_path / "out.json"
    assert main(["calibrate", "spu", "--update", str(DATA_DIR / "spu-cheetah.json"), "--compute-forms", "gelu",
                 "-o", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--compute" in error[0] and not out.exists()
    assert main(["calibrate", "spu", "--update", str(DATA_DIR / "spu-cheetah.json"), "--compute",
                 "--compute-forms", "div/rows", "-o", str(out)]) == 2
    assert "div/rows" in capsys.readouterr().err and not out.exists()
    assert main(["calibrate", "spu", "--compute", "-o", str(out)]) == 2  # nothing to add the timings to
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--update" in error[0] and not out.exists()


# Predicted against measured seconds on held-out configurations is a timing on this machine, so it is a
# benchmark (benchmarks/latency.py, held-out rows in benchmarks/README.md "Latency"), not a unit test: a
# test could not hold it on a machine of another speed or load.


def test_he_work_features_follow_the_block_plan():
    from aero_compile.cost.cheetah_packing import secret_product_work

    one_block = secret_product_work(2, 64, 64)  # one result block, returned unpacked: no automorphism
    assert one_block == {"he_result_blocks": 2.0, "he_automorphisms": 0.0}
    wide, deep = secret_product_work(32, 64, 256), secret_product_work(32, 256, 64)
    assert wide["he_result_blocks"] == deep["he_result_blocks"] == 128.0  # 64 blocks per DotOLE, 2 DotOLEs
    assert deep["he_automorphisms"] > wide["he_automorphisms"] > 0  # packing d1 = 256 vs 64 products
    assert secret_product_work(32, 64, 256, products=4)["he_result_blocks"] == 4 * wide["he_result_blocks"]
