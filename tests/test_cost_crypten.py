"""The crypten profile against CrypTen itself: single ops re-measured at sizes the calibration never ran."""

import pytest

from aero_compile.cost.crypten_ops import BY_LENGTH, PROGRAMS, measure
from aero_compile.cost.profiles import load_profile

# Sizes outside the calibration grid (rows x length; matmul adds its output width).
ROWS, LENGTH, WIDTH = 5, 12, 7
BY_LENGTH_SIZE = 16  # softmax/max rounds depend on the length: one the profile measured


def _features(kind, rows, length, width):
    if kind == "matmul":
        return {"calls": 1, "operand_elements": rows * length + length * width}
    if kind == "mul":
        return {"calls": 1, "operand_elements": 2 * rows * length}
    return {"calls": 1, "elements": rows * length, "rows": rows, "length": length}


@pytest.fixture(scope="module")
def remeasured():
    cases = [(kind, (ROWS, BY_LENGTH_SIZE if kind in BY_LENGTH else LENGTH), WIDTH) for kind in PROGRAMS]
    return measure(cases)


def test_profile_predicts_crypten_single_ops(remeasured):
    profile = load_profile("crypten")
    assert len(remeasured) == len(PROGRAMS)
    for m in remeasured:
        rows, length = m["shape"]
        predicted = profile.cost(m["kind"], _features(m["kind"], rows, length, m["width"]))
        assert predicted.rounds == m["rounds"], m
        assert abs(predicted.bytes - m["bytes"]) <= 0.02 * m["bytes"], (m, predicted)
        assert not predicted.approximate


def test_linear_and_embedding_are_costed_as_the_measured_beaver_product():
    ops = load_profile("crypten").ops
    assert ops["linear"]["bytes"] == ops["matmul"]["bytes"] == ops["embedding"]["bytes"]
    assert ops["matmul"]["rounds"] == {"calls": 1}


def test_profile_records_how_it_was_measured_and_fits_its_measurements():
    profile = load_profile("crypten")
    source = profile.data["source"]
    assert source["kind"] == "measured" and source["how"].startswith("aero-compile calibrate crypten")
    assert "per party" in profile.data["bytes_counted"]
    measurements = profile.data["measurements"]
    assert len(measurements) > 50
    for m in measurements:  # the stored coefficients reproduce every raw measurement they came from
        rows, length = m["shape"]
        predicted = profile.cost(m["kind"], _features(m["kind"], rows, length, m["width"]))
        assert predicted.rounds == m["rounds"] and predicted.bytes == pytest.approx(m["bytes"], rel=1e-6), m
