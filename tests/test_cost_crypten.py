"""The crypten profile against CrypTen itself: single op forms re-measured at sizes the calibration never ran."""

import pytest

from aero_compile.cost.profiles import load_profile
from aero_compile.targets.crypten.calibrate import analyzer_steps, fit_profile, measure, predict
from aero_compile.targets.crypten.calibration_forms import FORMS

# Sizes outside the calibration grid (rows x length; matmul adds its output width).
ROWS, LENGTH, WIDTH = 5, 12, 7
BY_LENGTH_SIZE = 16  # softmax/max rounds depend on the length: one the profile measured


@pytest.fixture(scope="module")
def remeasured():
    cases = [(name, ROWS, BY_LENGTH_SIZE if form.by_length else LENGTH, WIDTH) for name, form in FORMS.items()]
    return measure(cases)


def test_profile_predicts_crypten_single_ops(remeasured):
    profile = load_profile("crypten")
    assert len(remeasured) == len(FORMS)
    for m in remeasured:
        rounds, nbytes = predict(profile, m)
        assert rounds == m["rounds"], m
        assert abs(nbytes - m["bytes"]) <= 0.02 * m["bytes"], (m, nbytes)
        assert not any(profile.cost(s["entry"], s["features"]).approximate for s in m["steps"])


def test_each_form_is_priced_by_its_own_entry_or_checked_as_a_composite():
    profile = load_profile("crypten")
    for name in FORMS:
        entries = [step.entry for step in analyzer_steps(name, ROWS, LENGTH, WIDTH)]
        assert entries == [name] or (len(entries) > 1 and name in profile.data["composite_checks"]), (name, entries)
    # a tensor division is a reciprocal and a product; reciprocal(x) alone is not
    assert [s.entry for s in analyzer_steps("div", 2, 8, 0)] == ["reciprocal", "mul"]
    assert [s.entry for s in analyzer_steps("reciprocal", 2, 8, 0)] == ["reciprocal"]


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
        rounds, nbytes = predict(profile, m)
        assert rounds == m["rounds"], m
        assert nbytes == pytest.approx(m["bytes"], rel=1e-6 if len(m["steps"]) == 1 else 0.02), m


def test_a_form_priced_by_another_entry_fails_calibration():
    from aero_compile.errors import AeroError

    m = {"form": "relu", "rows": 2, "length": 8, "width": 0, "rounds": 9, "bytes": 100,
         "steps": [{"entry": "gelu", "features": {"elements": 16.0}}]}
    with pytest.raises(AeroError, match="prices form 'relu' as \\['gelu'\\]"):
        fit_profile([m], lengths=())
