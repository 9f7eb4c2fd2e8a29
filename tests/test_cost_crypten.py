"""The crypten profile against CrypTen itself: single op forms re-measured at sizes the calibration never ran."""

import pytest

from aero_compile.cost.profiles import load_profile
from aero_compile.targets.crypten.calibrate import analyzer_steps, fit_profile, measure, predict
from aero_compile.targets.crypten.calibration_forms import FORMS

pytestmark = pytest.mark.crypten  # single ops re-measured between CrypTen parties

# Sizes outside the calibration grid (rows x length; matmul adds its output width).
ROWS, LENGTH, WIDTH = 5, 12, 7
BY_LENGTH_SIZE = 11  # softmax/max rounds depend on the length: one the calibration never measured


@pytest.fixture(scope="module")
def remeasured():
    cases = [(name, ROWS, BY_LENGTH_SIZE if form.by_length else LENGTH, WIDTH) for name, form in FORMS.items()]
    return measure(cases)


def test_profile_predicts_crypten_single_ops(remeasured):
    profile = load_profile("crypten")
    # every form, and the once-per-model setup (weight_mask) of each form whose weights are masked once
    per_model = [name for name, form in FORMS.items() if form.weight_masks == "per-model"]
    assert per_model and len(remeasured) == len(FORMS) + len(per_model)
    assert sorted(m["of"] for m in remeasured if m["form"] == "weight_mask") == sorted(per_model)
    for m in remeasured:
        rounds, nbytes = predict(profile, m)
        assert rounds == m["rounds"], m
        assert abs(nbytes - m["bytes"]) <= 0.02 * m["bytes"], (m, nbytes)
        assert not any(profile.cost(s["entry"], s["features"]).approximate for s in m["steps"])


def test_each_form_is_priced_by_its_own_entry_or_checked():
    profile = load_profile("crypten")
    for name in FORMS:
        entries = [step.entry for step in analyzer_steps(name, ROWS, LENGTH, WIDTH)]
        assert entries == [name] or name in profile.data["checks"], (name, entries)
    # a tensor division is a reciprocal and a product; reciprocal(x) alone is not; x / w (the owner's) a product
    assert [s.entry for s in analyzer_steps("div", 2, 8, 0)] == ["reciprocal", "mul"]
    assert [s.entry for s in analyzer_steps("reciprocal", 2, 8, 0)] == ["reciprocal"]
    assert [s.entry for s in analyzer_steps("div/weight", 2, 8, 0)] == ["mul/weight"]


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


def test_a_checked_form_that_disagrees_with_its_steps_fails_calibration():
    from aero_compile.errors import AeroError

    profile = load_profile("crypten")
    measured = [dict(m) for m in profile.data["measurements"]]
    fit_profile(measured, sorted({m["length"] for m in measured if m["form"] == "softmax"}))  # as shipped: agrees
    for m in measured:
        if m["form"] == "div":
            m["rounds"] += 1  # as if the backend ran one more round than reciprocal + product
    with pytest.raises(AeroError, match="form 'div' at .* its steps \\['reciprocal', 'mul'\\] predict"):
        fit_profile(measured, sorted({m["length"] for m in measured if m["form"] == "softmax"}))
