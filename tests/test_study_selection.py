"""benchmarks/aero_study.py --only selects variants by short comma-separated keys (issue 12, defect 10)."""

import importlib.util
import sys
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parent.parent / "benchmarks" / "aero_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("aero_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["aero_study"] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("aero_study", None)


class _UsageError(Exception):
    pass


def _error(message):
    raise _UsageError(message)


def test_keys_are_unique_per_suite(study):
    for chosen in (study.variants(4), study.attention_variants(0.25)):
        keys = [variant.key for variant in chosen]
        assert all(keys) and len(set(keys)) == len(keys)


def test_only_takes_comma_separated_keys_and_keeps_reference_and_bases(study):
    chosen = study.attention_variants(0.25)
    picked = study.select_variants(chosen, "quad-length, linearize", _error)
    assert [v.key for v in picked] == ["fused", "linearize", "quad-length"]  # fused: the reference and the base
    aero = study.select_variants(study.variants(4), "pruned,ereg", _error)
    assert [v.label for v in aero] == ["SM+LN+G", "SM+ScFuFFN, 6 deepest FFNs pruned", "EReg(SM(t)+ScFuFFN)"]


def test_an_unknown_key_names_the_keys_there_are(study):
    with pytest.raises(_UsageError, match=r"unknown variant key\(s\) SM\+ScFuFFN, 6 deepest.*the keys are: baseline, relu"):
        study.select_variants(study.variants(4), "SM+ScFuFFN, 6 deepest FFNs pruned", _error)
