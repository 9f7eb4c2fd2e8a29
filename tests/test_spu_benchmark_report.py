"""benchmarks/spu_private.py's depth lines, on synthetic rows: the fit docs/private-spu.md's depth figures come from."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "spu_private.py"
_SPEC = importlib.util.spec_from_file_location("spu_private_benchmark", _PATH)
spu_private = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(spu_private)


def _row(model: str, before: float, after: float) -> dict:
    return {"model": model, "seq_len": 128, "protocol": "cheetah", "before": {"bytes": before}, "after": {"bytes": after}}


def test_linear_fit_recovers_a_line_and_reports_its_worst_residual():
    intercept, slope, worst = spu_private.linear_fit([1, 2, 3], [30.0, 50.0, 70.0])
    assert (intercept, slope, worst) == (pytest.approx(10.0), pytest.approx(20.0), pytest.approx(0.0, abs=1e-12))
    assert spu_private.linear_fit([1, 2, 3], [30.0, 52.0, 70.0])[2] > 0.01


def test_narrow_depth_line_needs_three_points_and_fits_per_layer():
    rows = [_row(spu_private.narrow_model(n), 28e6 + 500e6 * n, 10e6 + 290e6 * n) for n in (1, 2, 3)]
    assert "need at least 3" in spu_private.narrow_report(rows[:2])[0]
    before, after = spu_private.narrow_report(rows)
    assert "500.00 MB per layer + 28.00 MB" in before and "worst residual of the line 0.00%" in before
    assert "290.00 MB per layer + 10.00 MB" in after


def test_depth_report_extrapolates_blocks_and_the_vocabulary_apart():
    blocks = [_row(spu_private.depth_model(n), (1 + 2 * n) * 1e9, (1 + n) * 1e9) for n in spu_private.DEPTH_LAYERS]
    # embedding + head alone grow linearly in the vocabulary: 0.5 GB + 1e-4 GB a row
    heads = [_row(spu_private.depth_model(0, v), (0.5 + 1e-4 * v) * 1e9, (0.5 + 1e-4 * v) * 1e9)
             for v in spu_private.HEAD_VOCABS]
    lines = spu_private.depth_report(blocks + heads)
    before_twelve = next(line for line in lines if "12 layers" in line and "SM+LN+G" in line)
    # blocks at V=1024 give 1 + 2n GB; swapping V=1024's embedding + head for V=50257's adds 1e-4 * 49233 GB
    assert f"{1 + 24 + 1e-4 * (50257 - 1024):.2f} GB" in before_twelve and "25.32 GB" in before_twelve
    assert "need at least 2" in spu_private.depth_report(blocks[:1])[0]


def test_rows_resume_past_a_last_line_cut_by_a_crash(tmp_path):
    rows = tmp_path / "rows.jsonl"
    spu_private.append_row(rows, _row("gpt2-tiny", 1.0, 0.5))
    with open(rows, "a") as handle:
        handle.write('{"model": "gpt2-ti')  # the next row, cut short
    assert [r["model"] for r in spu_private.read_rows(rows)] == ["gpt2-tiny"]
