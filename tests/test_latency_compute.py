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
    line in its size: per matrix, HE polynomial, packing automorphism and result element. Synthetic seconds in
    those features come back exactly."""
    from aero_compile.targets.spu.calibrate import _matrix_latency

    from aero_compile.targets.spu.calibration_forms import form_program

    recorded = [r for r in load_profile("spu-cheetah").data["measurements"] if r["form"] == "matmul"]
    assert len(recorded) >= 6
    # the features as this code computes them (a refit recomputes them too)
    recorded = [{**r, "steps": form_program("matmul", r["rows"], r["length"], r["width"])[2]} for r in recorded]

    def truth(features):
        return (0.02 * features["matrix_products"] + 3e-6 * features["result_elements"]
                + 0.0004 * features["he_polynomials"] + 0.0015 * features["he_automorphisms"])

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
        assert where["kind"] == "measured" and where["command"].startswith(
            ("aero-compile calibrate spu", "python -m aero_compile.targets.spu.compute_parts"))
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
    assert one_block["he_result_blocks"] == 2.0 and one_block["he_automorphisms"] == 0.0
    assert one_block["he_polynomials"] == 4.0 and one_block["result_elements"] == 128.0
    wide, deep = secret_product_work(32, 64, 256), secret_product_work(32, 256, 64)
    assert wide["he_result_blocks"] == deep["he_result_blocks"] == 128.0  # 64 blocks per DotOLE, 2 DotOLEs
    assert deep["he_automorphisms"] > wide["he_automorphisms"] > 0  # packing d1 = 256 vs 64 products
    assert secret_product_work(32, 64, 256, products=4)["he_result_blocks"] == 4 * wide["he_result_blocks"]


def test_product_points_leave_out_runs_that_paid_a_silent_ot_refill():
    from aero_compile.targets.spu.compute_parts import pooled_cases
    from aero_compile.targets.spu.process_timing import fold_runs

    cases = [{"form": "matmul", "repeats": 3}, {"form": "mul", "repeats": 2}]
    runs = [{"seconds": s, "rounds": n, "bytes": 10}
            for s, n in ((6.9, 2228), (4.9, 18), (5.1, 18), (0.5, 2200), (0.3, 4))]
    fold_runs(cases, runs, fixed_s=0.1)
    assert cases[0]["seconds"] == pytest.approx(4.9) and cases[0]["refill_runs"] == 1  # median of 4.9, 5.1
    assert cases[1]["seconds"] == pytest.approx(0.3)  # elementwise forms: the mean, refills included
    # parts that timed one size: their runs pooled, each less its own part's fixed cost
    case = {"form": "matmul", "rows": 2, "length": 64, "width": 64, "repeats": 2, "runs_bytes": [1, 1]}
    parts = [{"fixed": {"seconds": 0.1}, "cases": [{**case, "runs_seconds": [1.1, 3.1], "runs_rounds": [3, 2000]}]},
             {"fixed": {"seconds": 0.2}, "cases": [{**case, "runs_seconds": [1.4, 1.2], "runs_rounds": [3, 3]}]}]
    (pooled,) = pooled_cases(parts)
    assert pooled["seconds"] == pytest.approx(1.0) and pooled["refill_runs"] == 1 and pooled["repeats"] == 4


def test_merging_parts_that_miss_sizes_is_refused_and_writes_nothing(tmp_path):
    import json
    import shutil

    from aero_compile.cost.profiles import DATA_DIR
    from aero_compile.errors import AeroError
    from aero_compile.targets.spu.compute_parts import main

    profile = tmp_path / "spu.json"
    shutil.copy(DATA_DIR / "spu-cheetah.json", profile)
    part = tmp_path / "part.json"
    case = {"form": "matmul", "rows": 2, "length": 64, "width": 64, "repeats": 1, "runs_seconds": [0.02],
            "runs_rounds": [3], "runs_bytes": [1], "steps": []}
    part.write_text(json.dumps({"part": "1/3", "fixed": {"seconds": 0.002}, "cases": [case], "where": {}}))
    with pytest.raises(AeroError, match="timed by no part"):
        main(["merge", "--update", str(profile), str(part)])
    assert profile.read_bytes() == (DATA_DIR / "spu-cheetah.json").read_bytes()
